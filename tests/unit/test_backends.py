"""Backends without root: registration, config keys, lease data, and the engine's
planning (desired state, stale and missing entries) over pure values."""

import base64
import dataclasses
import ipaddress

import pytest

from cni_plugin import backends
from cni_plugin.backends import engine
from cni_plugin.backends.base import FDB, NEIGH, ROUTE, BackendDataError, Device
from cni_plugin.backends.vxlan import VxlanConfig, VxlanData
from cni_plugin.datapath.underlay import Underlay
from cni_plugin.subnet.lease import ConfigError, Lease, NetworkConfig

UNDERLAY = Underlay(2, "eth0", 1500, ipaddress.ip_network("192.168.77.0/24"))
DEVICE = Device(9, "weft.1")


def net(backend: dict, **extra) -> NetworkConfig:
    return NetworkConfig.from_dict("n", {"Network": "10.244.0.0/16", "Backend": backend, **extra})


def lease(n: int, backend_type="vxlan", mac=None, vni=1, public=None, v6=False) -> Lease:
    data = VxlanData(vni, f"02:00:00:00:00:{n:02x}" if mac is None else mac) if backend_type == "vxlan" else None
    return Lease(subnet=ipaddress.ip_network(f"10.244.{n}.0/24"),
                 public_ip=ipaddress.ip_address(public or f"192.168.77.{n}"), node_name=f"node{n}",
                 backend_type=backend_type, backend_data=data,
                 ipv6_subnet=ipaddress.ip_network(f"fd00:10:244:{n}::/64") if v6 else None)


def plan(config: NetworkConfig, peers, device=DEVICE) -> engine.Plan:
    backend = backends.get(config.backend_type)(config.backend)
    return engine.Plan.for_network(backend, config, lease(1, config.backend_type), UNDERLAY,
                                   device if config.backend_type == "vxlan" else Device(), peers)


def test_every_builtin_backend_is_registered_by_name():
    assert backends.names() == ["host-gw", "vxlan", "wireguard"]
    with pytest.raises(KeyError):
        backends.get("wireguard-not-yet")


def test_every_backend_declares_which_entries_the_kernel_notifies_about():
    """A quiet pass skips only what notifications cover; the rest is read every pass."""
    kinds = {name: engine.Plan.for_network(backends.get(name)(None), net({"Type": name}),
                                           lease(1, name), UNDERLAY, DEVICE).unnotified_kinds()
             for name in backends.names()}
    assert kinds == {"host-gw": frozenset(), "vxlan": frozenset(), "wireguard": frozenset({"listener", "peer"})}
    for name in backends.names():
        assert isinstance(backends.get(name).NOTIFIED_KINDS, frozenset), name


def test_a_backend_that_does_not_declare_its_notified_entries_is_refused():
    from cni_plugin.backends.base import Backend

    class Undeclared(Backend):
        name = "ipv6-tunnel-not-yet"

    class Overclaiming(Backend):
        name = "overclaiming-not-yet"
        DEVICE_KINDS = ("session",)
        NOTIFIED_KINDS = frozenset({ROUTE, "session"})

    with pytest.raises(TypeError, match="must declare NOTIFIED_KINDS"):
        backends.register(Undeclared)
    with pytest.raises(TypeError, match="session"):
        backends.register(Overclaiming)
    assert "ipv6-tunnel-not-yet" not in backends.names()


def test_vxlan_config_keys_defaults_and_errors():
    assert net({}).backend == VxlanConfig(vni=1, port=8472, direct_routing=False)
    assert net({"VNI": 7, "Port": 4789, "DirectRouting": True}).backend == VxlanConfig(7, 4789, True)
    for bad, message in (({"VNI": 0}, "Backend.VNI 0 must be an integer from 1 to 16777215"),
                         ({"VNI": True}, "Backend.VNI True must be an integer"),
                         ({"Port": 70000}, "Backend.Port 70000 must be an integer from 1 to 65535"),
                         ({"DirectRouting": "yes"}, "Backend.DirectRouting must be true or false")):
        with pytest.raises(ConfigError, match=f"network n: {message}"):
            net(bad)


def test_unknown_backend_type_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"Backend.Type 'ipsec' is not one of host-gw, vxlan, wireguard"):
        net({"Type": "ipsec"})


def test_vni_clash_between_vxlan_networks():
    vxlan = backends.get("vxlan")
    assert vxlan.config_clash(VxlanConfig(vni=3), VxlanConfig(vni=3), "other") == \
        "Backend.VNI 3 is already used by network other; every VXLAN network needs its own VNI"
    assert vxlan.config_clash(VxlanConfig(vni=3), VxlanConfig(vni=4), "other") is None


def test_lease_data_round_trips_and_bad_data_is_refused():
    mine = lease(3)
    again = Lease.from_json(mine.key, mine.to_json())
    assert again == mine and again.backend_data == VxlanData(1, "02:00:00:00:00:03")
    with pytest.raises(ConfigError, match="VtepMAC 'zz' is not a MAC address"):
        Lease.from_json(mine.key, '{"PublicIP": "192.0.2.1", "BackendData": {"VtepMAC": "zz"}}')
    with pytest.raises(ConfigError, match="VNI 'x' is not a number"):
        Lease.from_json(mine.key, '{"PublicIP": "192.0.2.1", "BackendData": {"VNI": "x"}}')
    with pytest.raises(BackendDataError):
        backends.get("vxlan").parse_lease_data({"VtepMAC": "01:02"})
    hostgw = Lease.from_json(mine.key, '{"PublicIP": "192.0.2.1", "BackendType": "host-gw"}')
    assert hostgw.backend_data is None and hostgw.vtep_mac == ""
    other = Lease.from_json(mine.key, '{"PublicIP": "192.0.2.1", "BackendType": "future", "BackendData": {"K": 1}}')
    assert other.backend_data == {"K": 1} and '"K": 1' in other.to_json()


def test_vxlan_planning_neighbour_fdb_route_in_that_order():
    entries = engine.peer_entries(plan(net({}), []), lease(2))
    mac, vtep = "02:00:00:00:00:02", ipaddress.ip_address("10.244.2.0")
    assert entries == [(NEIGH, (DEVICE.index, vtep), mac), (FDB, (DEVICE.index, mac), ipaddress.ip_address("192.168.77.2")),
                       (ROUTE, ipaddress.ip_network("10.244.2.0/24"), (vtep, DEVICE.index, True))]


def test_vxlan_direct_routing_only_for_peers_on_the_underlay_network():
    p = plan(net({"DirectRouting": True}), [])
    near = engine.peer_entries(p, lease(2))
    assert near == [(ROUTE, ipaddress.ip_network("10.244.2.0/24"),
                     (ipaddress.ip_address("192.168.77.2"), UNDERLAY.index, False))]
    far = engine.peer_entries(p, lease(3, public="10.9.9.9"))
    assert [kind for kind, _, _ in far] == [NEIGH, FDB, ROUTE]


@pytest.mark.parametrize("peer,problem", [
    (lease(2, mac=""), "no VtepMAC"),
    (lease(2, vni=5), "VNI 5, but the local device uses VNI 1"),
    (lease(2, backend_type="host-gw"), "backend host-gw, but this network uses vxlan"),
    (Lease(ipaddress.ip_network("10.9.0.0/24"), ipaddress.ip_address("192.168.77.9"), "x",
           backend_data=VxlanData(1, "02:00:00:00:00:09")), "subnet 10.9.0.0/24 is outside the cluster network"),
])
def test_unusable_vxlan_peers_say_why(peer, problem):
    with pytest.raises(ValueError, match=problem):
        engine.peer_entries(plan(net({}), []), peer)


def test_host_gw_planning_and_its_l2_rule():
    p = plan(net({"Type": "host-gw"}), [])
    assert engine.peer_entries(p, lease(2, "host-gw")) == [
        (ROUTE, ipaddress.ip_network("10.244.2.0/24"), (ipaddress.ip_address("192.168.77.2"), UNDERLAY.index, False))]
    with pytest.raises(ValueError, match="host-gw needs every node on one L2 network"):
        engine.peer_entries(p, lease(3, "host-gw", public="10.1.2.3"))


def test_desired_state_skips_the_local_lease_and_protects_unusable_ones():
    broken = lease(3, mac="")
    desired = engine.desired_state(plan(net({}), [lease(1), lease(2), broken]))
    assert {lease_key for _, lease_key in desired.entries.values()} == {"10.244.2.0-24"}
    assert desired.errors == ["lease 10.244.3.0-24 (node node3, 192.168.77.3): no VtepMAC"]
    assert (ROUTE, ipaddress.ip_network("10.244.3.0/24")) in desired.protected
    assert (NEIGH, (DEVICE.index, ipaddress.ip_address("10.244.3.0"))) in desired.protected


def test_stale_and_missing_entries_against_an_actual_state():
    p = plan(net({}), [lease(2)])
    desired = engine.desired_state(p)
    gone_route = (ROUTE, ipaddress.ip_network("10.244.7.0/24"))
    actual = {gone_route: (ipaddress.ip_address("10.244.7.0"), DEVICE.index, True),
              (FDB, (DEVICE.index, "02:00:00:00:00:02")): ("not permanent", ipaddress.ip_address("192.168.77.2"))}
    assert engine.stale_entries(desired, actual) == [(*gone_route, actual[gone_route])]
    missing = engine.missing_entries(desired, actual)
    assert [kind for kind, _, _, _ in missing] == [NEIGH, FDB, ROUTE]  # the learned FDB entry is rewritten
    assert all(lease_key == "10.244.2.0-24" for _, _, _, lease_key in missing)


def test_removal_lists_what_the_peer_owned():
    p = plan(net({}), [])
    owned = p.backend.peer_owned(p, lease(2, v6=True))
    assert owned == [(FDB, (DEVICE.index, "02:00:00:00:00:02"), ipaddress.ip_address("192.168.77.2")),
                     (NEIGH, (DEVICE.index, ipaddress.ip_address("10.244.2.0")), "02:00:00:00:00:02"),
                     (NEIGH, (DEVICE.index, ipaddress.ip_address("fd00:10:244:2::")), "02:00:00:00:00:02")]
    assert backends.get("host-gw")(None).peer_owned(p, lease(2, "host-gw")) == []


class _RecordingNetlink:
    """A kernel that holds nothing and records every write (batched or one by one)."""

    def __init__(self):
        self.writes = []

    def routes(self, version, proto=None):
        return []

    def permanent_neighbours(self, index):
        return {}

    def fdb(self, index):
        return {}

    def batch(self):
        writes = self.writes

        class Batch:
            def replace_neighbours(self, index, items):
                writes.extend(("neighbour", key) for key, _ in items)
                return {}

            def replace_fdbs(self, index, items):
                writes.extend(("fdb", key) for key, _ in items)
                return {}

            def replace_routes(self, items):
                writes.extend(("route", item[0]) for item in items)
                return {}
        return Batch()


def test_a_batched_reconcile_writes_every_kind_in_write_order():
    nl = _RecordingNetlink()
    drift = engine.reconcile(nl, plan(net({}), [lease(n) for n in range(2, 7)]))
    assert drift.added == 15 and len(nl.writes) == 15
    kinds = [kind for kind, _ in nl.writes]
    assert kinds == ["neighbour"] * 5 + ["fdb"] * 5 + ["route"] * 5


# -- underlay families (engine.underlay_route): which inner family rides which underlay --
UNDERLAY6 = Underlay(2, "eth0", 1400, ipaddress.ip_network("fd00:77::/64"))
DEVICE6 = Device(10, "weft-v6.1")


def dual_lease(n: int, backend_type="vxlan", v4=True, v6=True) -> Lease:
    base = lease(n, backend_type, v6=True)
    return Lease(subnet=base.subnet, public_ip=base.public_ip if v4 else None, node_name=base.node_name,
                 backend_type=backend_type, backend_data=base.backend_data, ipv6_subnet=base.ipv6_subnet,
                 public_ipv6=ipaddress.ip_address(f"fd00:77::{n}") if v6 else None)


def dual_plan(config: NetworkConfig, v4=True, v6=True) -> engine.Plan:
    backend = backends.get(config.backend_type)(config.backend)
    vxlan = config.backend_type == "vxlan"
    return engine.Plan.for_network(backend, config, dual_lease(1, config.backend_type, v4, v6),
                                   UNDERLAY if v4 else None, DEVICE if vxlan and v4 else Device(), (),
                                   UNDERLAY6 if v6 else None, DEVICE6 if vxlan and v6 else Device())


DUAL = {"EnableIPv6": True, "IPv6Network": "fd00:10:244::/48"}


@pytest.mark.parametrize("mine,theirs,route", [
    ({4, 6}, (True, True), {4: 4, 6: 6}),   # both share both: each its own
    ({4, 6}, (False, True), {4: 6, 6: 6}),  # share IPv6 only: both ride it
    ({4, 6}, (True, False), {4: 4, 6: 4}),
    ({6}, (True, True), {4: 6, 6: 6}),
    ({4}, (True, True), {4: 4, 6: 4}),
])
def test_which_underlay_carries_each_inner_family(mine, theirs, route):
    assert engine.underlay_route(mine, dual_lease(2, v4=theirs[0], v6=theirs[1])) == route


def test_no_common_underlay_family_is_no_peer():
    with pytest.raises(engine.NoCommonUnderlay, match="this node has IPv4 underlay, node node2 has IPv6"):
        engine.underlay_route({4}, dual_lease(2, v4=False))
    desired = engine.desired_state(dataclasses.replace(dual_plan(net({}, **DUAL), v6=False),
                                                       peers=(dual_lease(2, v4=False),)))
    assert desired.entries == {} and "no common underlay family" in desired.errors[0]


def test_vxlan_over_both_underlays_puts_each_inner_family_on_its_own_device():
    p = dual_plan(net({}, **DUAL))
    mac = "02:00:00:00:00:02"
    v4, v6 = ipaddress.ip_address("10.244.2.0"), ipaddress.ip_address("fd00:10:244:2::")
    assert engine.peer_entries(p, dual_lease(2)) == [
        (NEIGH, (DEVICE.index, v4), mac), (NEIGH, (DEVICE6.index, v6), mac),
        (FDB, (DEVICE.index, mac), ipaddress.ip_address("192.168.77.2")),
        (FDB, (DEVICE6.index, mac), ipaddress.ip_address("fd00:77::2")),
        (ROUTE, ipaddress.ip_network("10.244.2.0/24"), (v4, DEVICE.index, True)),
        (ROUTE, ipaddress.ip_network("fd00:10:244:2::/64"), (v6, DEVICE6.index, True))]
    # a peer with only an IPv6 underlay: both inner families on weft-v6.<VNI>
    only6 = engine.peer_entries(p, dual_lease(2, v4=False))
    assert {key[0] for kind, key, _ in only6 if kind != ROUTE} == {DEVICE6.index}
    assert {value[1] for kind, _, value in only6 if kind == ROUTE} == {DEVICE6.index}


def test_host_gw_routes_ipv4_via_an_ipv6_next_hop_and_reports_the_ipv6_gap():
    only6 = dual_plan(net({"Type": "host-gw"}, **DUAL), v4=False)
    hop = ipaddress.ip_address("fd00:77::2")
    assert engine.peer_entries(only6, dual_lease(2, "host-gw")) == [
        (ROUTE, ipaddress.ip_network("10.244.2.0/24"), (hop, UNDERLAY6.index, False)),
        (ROUTE, ipaddress.ip_network("fd00:10:244:2::/64"), (hop, UNDERLAY6.index, False))]
    # the dual-stack hole: dual-stack pods, only an IPv4 underlay in common: the IPv4
    # route is programmed, the IPv6 subnet is a reported gap (no IPv6 route via IPv4)
    only4 = dual_plan(net({"Type": "host-gw"}, **DUAL), v6=False)
    peer = dual_lease(2, "host-gw")
    assert engine.peer_entries(only4, peer) == [
        (ROUTE, ipaddress.ip_network("10.244.2.0/24"), (ipaddress.ip_address("192.168.77.2"), UNDERLAY.index, False))]
    gaps = only4.backend.peer_gaps(only4, peer)
    assert len(gaps) == 1 and "fd00:10:244:2::/64 not routed" in gaps[0]


def test_wireguard_endpoint_family_follows_the_common_underlay():
    from cni_plugin.backends.wireguard import PEER, WireguardData

    def wg_lease(n, v4=True, v6=True):
        base = dual_lease(n, "wireguard", v4, v6)
        key = base64.b64encode(bytes([n]) * 32).decode()
        return Lease(subnet=base.subnet, public_ip=base.public_ip, node_name=base.node_name,
                     backend_type="wireguard", backend_data=WireguardData(key, 51820),
                     ipv6_subnet=base.ipv6_subnet, public_ipv6=base.public_ipv6)

    p = dual_plan(net({"Type": "wireguard"}, **DUAL))
    p = dataclasses.replace(p, device=Device(11, "weft-wg.51820"), local=wg_lease(1))
    endpoints = {v: [value[0] for kind, _, value in engine.peer_entries(p, wg_lease(2, *v)) if kind == PEER][0]
                 for v in ((True, True), (False, True), (True, False))}
    assert endpoints == {(True, True): "192.168.77.2:51820", (False, True): "[fd00:77::2]:51820",
                         (True, False): "192.168.77.2:51820"}
