"""The overlay datapath against real namespaces: VXLAN, DirectRouting, host-gw, dual-stack.

Layout per test: one underlay namespace holding bridge `br0`; 2-3 node namespaces,
each with `eth0` (a veth into br0) at 192.168.77.<n>/24, the VXLAN device made by
ensure_vxlan, and a bridge `cbr0` holding <subnet>.1 (a veth port inside the node
keeps it up) standing in for the pods.  Leases are built by hand.
"""

import ipaddress
import json
import time

import pytest

from cni_plugin import backends
from cni_plugin.backends import engine
from cni_plugin.backends.base import Device
from cni_plugin.backends.engine import Drift, OverlayError, Plan
from cni_plugin.backends.vxlan import VxlanData, device_name
from cni_plugin.datapath import underlay
from cni_plugin.datapath.constants import WEFT_RTPROT
from cni_plugin.datapath.errors import DatapathError, LinkConflict
from cni_plugin.datapath.netlink import open_agent
from cni_plugin.datapath.vxlan_device import ensure_vxlan
from cni_plugin.subnet.lease import Lease, NetworkConfig
from lab.namespaces import Namespace

VNI = 1
DEV = device_name(VNI)
PING_TRIES = 3


def config(backend="vxlan", ipv6=False, direct=False) -> NetworkConfig:
    raw = {"Network": "10.244.0.0/16", "Backend": {"Type": backend, "VNI": VNI,
                                                  "DirectRouting": direct}}
    if ipv6:
        raw.update(EnableIPv6=True, IPv6Network="fd00:10:244::/48")
    return NetworkConfig.from_dict("weftnet", raw)


class Node:
    def __init__(self, lab, n: int, cfg: NetworkConfig, public: str):
        self.n, self.cfg = n, cfg
        self.public_ip = ipaddress.ip_interface(public)
        self.ns = lab.namespace("wovn")
        self.ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", f"u{n}",
                   "netns", lab.underlay.name)
        lab.underlay.ip("link", "set", f"u{n}", "master", "br0", "up")
        self.ns.ip("addr", "add", str(self.public_ip), "dev", "eth0")
        self.ns.ip("link", "set", "eth0", "up")
        self.ipr = open_agent(self.ns.path)  # bound to the node namespace
        lab.sockets.append(self.ipr)
        self.subnet = ipaddress.ip_network(f"10.244.{n}.0/24")
        self.subnet6 = cfg.ipv6_subnet_for(self.subnet)
        self.mac = f"0e:77:00:00:00:{n:02x}"
        self.lease = Lease(subnet=self.subnet, public_ip=self.public_ip.ip, node_name=f"node{n}",
                           backend_type=cfg.backend_type, backend_data=VxlanData(VNI, self.mac),
                           ipv6_subnet=self.subnet6)
        self.underlay = underlay.interface_of_ip(self.ipr, self.public_ip.ip)
        self.device = None
        self._pod_bridge()

    def _pod_bridge(self):
        self.ns.ip("link", "add", "cbr0", "type", "bridge")
        self.ns.ip("link", "add", "pod0", "type", "veth", "peer", "name", "pod1")
        self.ns.ip("link", "set", "pod0", "master", "cbr0", "up")
        self.ns.ip("link", "set", "pod1", "up")
        self.ns.ip("link", "set", "cbr0", "up")
        self.ns.ip("addr", "add", f"{self.pod_ip(4)}/24", "dev", "cbr0")
        if self.subnet6 is not None:
            self.ns.ip("addr", "add", f"{self.pod_ip(6)}/64", "dev", "cbr0", "nodad")

    def pod_ip(self, version=4):
        return (self.subnet if version == 4 else self.subnet6).network_address + 1

    def ensure_device(self, mac=None, port=8472):
        addresses = [ipaddress.ip_interface(f"{self.subnet.network_address}/32")]
        if self.subnet6 is not None:
            addresses.append(ipaddress.ip_interface(f"{self.subnet6.network_address}/128"))
        self.device = ensure_vxlan(self.ipr, DEV, VNI, self.public_ip.ip, port, self.underlay.index,
                                   self.underlay.mtu - 50, mac or self.mac, addresses)
        return self.device

    def plan(self, peers) -> Plan:
        device = self.device
        backend = backends.get(self.cfg.backend_type)(self.cfg.backend)
        return Plan.for_network(backend, self.cfg, self.lease, self.underlay,
                                device=Device(device.index, DEV) if device else Device(), peers=peers)

    def ping(self, other: "Node", version=4, size=None, tries=PING_TRIES) -> bool:
        """A bounded number of single pings, from our pod address to theirs."""
        args = ["ping", f"-{version}", "-c", "1", "-W", "2", "-I", str(self.pod_ip(version))]
        if size is not None:
            args += ["-M", "do", "-s", str(size)]
        for _ in range(tries):
            if self.ns.run([*args, str(other.pod_ip(version))], check=False, timeout=10).returncode == 0:
                return True
            time.sleep(0.2)
        return False

    def cut_off(self, other: "Node", version=4) -> bool:
        """No reply to one ping (the positive pings prove the path works when it should)."""
        return not self.ping(other, version, tries=1)

    # kernel state, read with the iproute2 tools (not with the code under test)
    def routes(self, version=4):
        return self.ns.ip_json(f"-{version}", "route", "show", "proto", str(WEFT_RTPROT))

    def neighbours(self):
        return [n for n in self.ns.ip_json("-4", "neigh", "show", "dev", DEV, "nud", "permanent")] + \
               [n for n in self.ns.ip_json("-6", "neigh", "show", "dev", DEV, "nud", "permanent")]

    def fdb(self):
        out = self.ns.run(["bridge", "-j", "fdb", "show", "dev", DEV]).stdout
        return json.loads(out) if out.strip() else []


class Lab:
    def __init__(self):
        self.namespaces, self.sockets = [], []

    def start(self):
        self.underlay = self.namespace("wovu")
        self.underlay.ip("link", "add", "br0", "type", "bridge")
        self.underlay.ip("link", "set", "br0", "up")

    def namespace(self, prefix):
        ns = Namespace(prefix)
        self.namespaces.append(ns)
        return ns

    def nodes(self, count, cfg, publics=None):
        publics = publics or [f"192.168.77.{n}/24" for n in range(1, count + 1)]
        return [Node(self, n, cfg, publics[n - 1]) for n in range(1, count + 1)]

    def close(self):
        for ipr in self.sockets:
            ipr.close()
        for ns in self.namespaces:
            ns.delete()


@pytest.fixture
def lab():
    made = Lab()
    try:
        made.start()
        yield made
    finally:
        made.close()


def program_all(nodes):
    leases = [node.lease for node in nodes]
    return [engine.reconcile(node.ipr, node.plan(leases)) for node in nodes]


def vxlan_cluster(lab, count, **cfg_args):
    nodes = lab.nodes(count, config(**cfg_args))
    for node in nodes:
        node.ensure_device()
    return nodes


def route_view(routes):
    return sorted((r["dst"], r.get("gateway"), r["dev"], "onlink" in r.get("flags", [])) for r in routes)


# -- the device -------------------------------------------------------------------

def test_vxlan_device_matches_the_design_and_ensure_is_idempotent(lab):
    node, = lab.nodes(1, config())
    first = node.ensure_device()
    assert first.action == "created"
    link, = node.ns.ip_json("-d", "link", "show", DEV)
    data = link["linkinfo"]["info_data"]
    assert link["linkinfo"]["info_kind"] == "vxlan"
    assert (data["id"], data["local"], data["port"], data["learning"], data["link"]) == \
        (VNI, "192.168.77.1", 8472, False, "eth0")
    assert link["mtu"] == node.underlay.mtu - 50 == 1450
    assert link["address"] == node.mac and "UP" in link["flags"]
    addrs = {(a["local"], a["prefixlen"]) for a in node.ns.ip_json("addr", "show", DEV)[0]["addr_info"]
             if a["scope"] == "global"}
    assert addrs == {("10.244.1.0", 32)}

    again = node.ensure_device()
    assert again == (first.index, "unchanged", "")
    assert node.ns.ip_json("link", "show", DEV)[0]["address"] == node.mac


def test_ensure_vxlan_repairs_in_place_and_recreates_on_identity_change(lab):
    node, = lab.nodes(1, config(ipv6=True))
    index = node.ensure_device().index
    node.ns.ip("link", "set", DEV, "mtu", "1300")
    node.ns.ip("addr", "add", "10.99.0.1/32", "dev", DEV)
    fixed = node.ensure_device()
    assert (fixed.index, fixed.action) == (index, "updated")
    assert "mtu -> 1450" in fixed.reason and "removed address 10.99.0.1/32" in fixed.reason
    info, = node.ns.ip_json("addr", "show", DEV)
    assert info["mtu"] == 1450
    assert {(a["local"], a["prefixlen"]) for a in info["addr_info"] if a["scope"] == "global"} == \
        {("10.244.1.0", 32), ("fd00:10:244:1::", 128)}
    v6 = [a for a in info["addr_info"] if a["local"] == "fd00:10:244:1::"][0]
    assert v6.get("nodad") is True

    moved = node.ensure_device(port=4789)
    assert moved.action == "recreated" and "dstport 8472 != 4789" in moved.reason
    link, = node.ns.ip_json("-d", "link", "show", DEV)
    assert link["linkinfo"]["info_data"]["port"] == 4789 and link["address"] == node.mac


def test_ensure_vxlan_refuses_a_foreign_link_of_the_same_name(lab):
    node, = lab.nodes(1, config())
    node.ns.ip("link", "add", DEV, "type", "bridge")
    with pytest.raises(LinkConflict, match=rf"link {DEV} exists and is a bridge"):
        node.ensure_device()
    assert node.ns.ip_json("-d", "link", "show", DEV)[0]["linkinfo"]["info_kind"] == "bridge"


def test_underlay_discovery(lab):
    node, = lab.nodes(1, config())
    node.ns.ip("route", "add", "default", "via", "192.168.77.254", "dev", "eth0")
    eth0 = node.ns.ip_json("link", "show", "eth0")[0]
    assert underlay.default_route_interface(node.ipr) == eth0["ifindex"]
    assert underlay.interface_of_ip(node.ipr, "192.168.77.1") == \
        (eth0["ifindex"], "eth0", 1500, ipaddress.ip_network("192.168.77.0/24"))
    with pytest.raises(DatapathError, match="no interface holds the public IP 192.168.77.9"):
        underlay.interface_of_ip(node.ipr, "192.168.77.9")
    with pytest.raises(DatapathError, match="no IPv6 default route"):
        underlay.default_route_interface(node.ipr, 6)


# -- VXLAN peers ----------------------------------------------------------------

def test_vxlan_peers_exact_kernel_state_and_pings_across_nodes(lab):
    a, b, c = nodes = vxlan_cluster(lab, 3)
    drifts = program_all(nodes)
    assert [(d.added, d.removed) for d in drifts] == [(6, 0)] * 3  # 2 peers x neigh+fdb+route

    assert route_view(a.routes()) == [("10.244.2.0/24", "10.244.2.0", DEV, True),
                                      ("10.244.3.0/24", "10.244.3.0", DEV, True)]
    assert sorted((n["dst"], n["lladdr"]) for n in a.neighbours()) == \
        [("10.244.2.0", b.mac), ("10.244.3.0", c.mac)]
    assert sorted((f["mac"], f["dst"], f["state"], tuple(f["flags"])) for f in a.fdb()) == \
        [(b.mac, "192.168.77.2", "permanent", ("self",)), (c.mac, "192.168.77.3", "permanent", ("self",))]
    assert all(n["dst"] != "10.244.1.0" for n in a.neighbours())  # never our own subnet

    assert a.ping(b) and a.ping(c) and c.ping(b)
    assert a.ping(b, size=1450 - 28), "a full-MTU packet must cross the VXLAN"
    too_big = a.ns.run(["ping", "-c", "1", "-W", "1", "-M", "do", "-s", str(1450 - 27), "-I",
                        str(a.pod_ip()), str(b.pod_ip())], check=False, timeout=10)
    assert too_big.returncode != 0 and "mtu=1450" in too_big.stdout + too_big.stderr
    assert engine.reconcile(a.ipr, a.plan([n.lease for n in nodes])) == Drift()


def test_reconcile_repairs_missing_and_wrong_entries_and_counts_them(lab):
    a, b, c = nodes = vxlan_cluster(lab, 3)
    program_all(nodes)
    a.ns.ip("route", "del", "10.244.2.0/24")
    a.ns.ip("neigh", "del", "10.244.3.0", "dev", DEV)
    a.ns.run(["bridge", "fdb", "del", c.mac, "dev", DEV, "dst", "192.168.77.3"])
    a.ns.run(["bridge", "fdb", "replace", b.mac, "dev", DEV, "dst", "192.168.77.9", "self", "permanent"])
    assert a.cut_off(b) and a.cut_off(c)

    drift = engine.reconcile(a.ipr, a.plan([n.lease for n in nodes]))
    assert (drift.added, drift.removed) == (4, 0), drift.details
    assert sorted(drift.details) == sorted([
        f"neighbour 10.244.3.0 lladdr {c.mac} dev {DEV} was missing",
        f"fdb {c.mac} dst 192.168.77.3 dev {DEV} was missing",
        f"fdb {b.mac} dst 192.168.77.2 dev {DEV} was wrong (had 192.168.77.9)",
        f"route 10.244.2.0/24 via 10.244.2.0 dev {DEV} onlink was missing",
    ])
    assert a.ping(b) and a.ping(c)
    assert engine.reconcile(a.ipr, a.plan([n.lease for n in nodes])) == Drift()


def test_reconcile_removes_a_departed_lease_in_reverse_order(lab):
    a, b, c = nodes = vxlan_cluster(lab, 3)
    program_all(nodes)
    drift = engine.reconcile(a.ipr, a.plan([a.lease, b.lease]))
    assert (drift.added, drift.removed) == (0, 3)
    assert [d.split()[0] for d in drift.details] == ["route", "fdb", "neighbour"]
    assert all("10.244.3.0" in d or c.mac in d for d in drift.details)
    assert route_view(a.routes()) == [("10.244.2.0/24", "10.244.2.0", DEV, True)]
    assert [n["dst"] for n in a.neighbours()] == ["10.244.2.0"]
    assert [f["mac"] for f in a.fdb()] == [b.mac]
    assert a.ping(b) and a.cut_off(c)


def test_reconcile_from_an_older_read_leaves_unsettled_leases_to_the_watch(lab):
    """A read taken before a watch event (as the agent's background read is): the lease the
    event programmed is not re-written as false drift, a lease removed since is not
    resurrected, and real drift of a settled lease is still repaired."""
    a, b, c = nodes = vxlan_cluster(lab, 3)
    program_all(nodes)
    engine.reconcile(a.ipr, a.plan([a.lease, b.lease]))  # a does not know c yet
    a.ns.ip("route", "del", "10.244.2.0/24")  # real drift on b, a settled lease
    before = engine.read_state(a.ipr, a.plan([a.lease, b.lease]))
    engine.apply_peer(a.ipr, a.plan([a.lease, b.lease, c.lease]), c.lease)  # an event after the read
    drift = engine.reconcile_from(a.ipr, a.plan([a.lease, b.lease, c.lease]), before,
                                  unsettled={c.lease.key})
    assert drift.details == [f"route 10.244.2.0/24 via 10.244.2.0 dev {DEV} onlink was missing"], drift.details
    assert a.ping(b) and a.ping(c)
    # c leaves after another read: the entries that read saw are deleted, not re-added
    before = engine.read_state(a.ipr, a.plan([a.lease, b.lease, c.lease]))
    engine.remove_peer(a.ipr, a.plan([a.lease, b.lease]), c.lease)
    drift = engine.reconcile_from(a.ipr, a.plan([a.lease, b.lease]), before, unsettled={c.lease.key})
    assert (drift.added, drift.removed) == (0, 0), drift.details  # already gone: nothing to count
    assert route_view(a.routes()) == [("10.244.2.0/24", "10.244.2.0", DEV, True)]
    assert [f["mac"] for f in a.fdb()] == [b.mac] and a.cut_off(c)


def test_reconcile_removes_stale_weft_entries_but_never_foreign_routes(lab):
    a, b = nodes = vxlan_cluster(lab, 2)
    program_all(nodes)
    stale_mac = "0e:77:00:00:00:50"
    a.ns.ip("neigh", "add", "10.244.50.0", "lladdr", stale_mac, "dev", DEV, "nud", "permanent")
    a.ns.run(["bridge", "fdb", "add", stale_mac, "dev", DEV, "dst", "192.168.77.50", "self", "permanent"])
    a.ns.ip("route", "add", "10.244.50.0/24", "via", "10.244.50.0", "dev", DEV, "onlink",
            "proto", str(WEFT_RTPROT))
    # not weft's: another protocol inside the cluster network, and weft's protocol outside it
    a.ns.ip("route", "add", "10.244.60.0/24", "via", "10.244.60.0", "dev", DEV, "onlink")
    a.ns.ip("route", "add", "172.31.0.0/24", "via", "192.168.77.9", "dev", "eth0",
            "proto", str(WEFT_RTPROT))

    # a leased subnet's route made by someone else is not read as weft's: weft writes its own
    a.ns.ip("route", "replace", "10.244.2.0/24", "via", "10.244.2.0", "dev", DEV, "onlink",
            "proto", "static")

    drift = engine.reconcile(a.ipr, a.plan([a.lease, b.lease]))
    assert (drift.added, drift.removed) == (1, 3), drift.details
    assert [d.split()[0] for d in drift.details] == ["route", "fdb", "neighbour", "route"]
    assert drift.details[-1] == f"route 10.244.2.0/24 via 10.244.2.0 dev {DEV} onlink was missing"
    assert route_view(a.routes()) == [("10.244.2.0/24", "10.244.2.0", DEV, True),
                                      ("172.31.0.0/24", "192.168.77.9", "eth0", False)]
    routes = a.ns.ip_json("route", "show")
    dsts = {r["dst"] for r in routes}
    assert {"10.244.60.0/24", "172.31.0.0/24", "10.244.2.0/24"} <= dsts
    assert "10.244.50.0/24" not in dsts
    assert [n["dst"] for n in a.neighbours()] == ["10.244.2.0"]
    assert [f["mac"] for f in a.fdb()] == [b.mac]


def test_unusable_lease_is_reported_by_key_and_others_are_still_programmed(lab):
    a, b, c = nodes = vxlan_cluster(lab, 3)
    program_all(nodes)
    broken = Lease(subnet=c.subnet, public_ip=c.public_ip.ip, node_name="node3", backend_data=VxlanData(VNI, ""))
    a.ns.ip("route", "del", "10.244.2.0/24")
    with pytest.raises(OverlayError) as err:
        engine.reconcile(a.ipr, a.plan([a.lease, b.lease, broken]))
    assert err.value.errors == ["lease 10.244.3.0-24 (node node3, 192.168.77.3): no VtepMAC"]
    assert (err.value.drift.added, err.value.drift.removed) == (1, 0)  # b's route was repaired
    # c's previous entries stay until its lease is fixed or gone
    assert len(a.routes()) == 2 and len(a.neighbours()) == 2 and len(a.fdb()) == 2
    assert a.ping(b) and a.ping(c)
    with pytest.raises(OverlayError, match="lease 10.244.3.0-24 .*VNI 7, but the local device uses VNI 1"):
        engine.apply_peer(a.ipr, a.plan([]), Lease(c.subnet, c.public_ip.ip, "node3",
                                                  backend_data=VxlanData(7, c.mac)))


def test_apply_peer_and_remove_peer_for_the_watch_path(lab):
    a, b = vxlan_cluster(lab, 2)
    engine.apply_peer(b.ipr, b.plan([]), a.lease)
    plan = a.plan([])
    assert engine.apply_peer(a.ipr, plan, a.lease) == Drift()  # our own lease: nothing
    done = engine.apply_peer(a.ipr, plan, b.lease)
    assert done.added == 3
    assert [d.split()[1] for d in done.details] == ["neighbour", "fdb", "route"]
    assert a.ping(b)
    assert engine.apply_peer(a.ipr, plan, b.lease).added == 3  # replace: idempotent
    assert len(a.routes()) == 1 and len(a.neighbours()) == 1 and len(a.fdb()) == 1

    gone = engine.remove_peer(a.ipr, plan, b.lease)
    assert (gone.removed, [d.split()[1] for d in gone.details]) == (3, ["route", "fdb", "neighbour"])
    assert a.routes() == [] and a.neighbours() == [] and a.fdb() == []
    assert a.cut_off(b)
    assert engine.remove_peer(a.ipr, plan, b.lease) == Drift()


# -- DirectRouting, host-gw, dual-stack -------------------------------------------------------

def test_direct_routing_uses_plain_routes_on_the_shared_l2_network(lab):
    # a and b share 192.168.77.0/24; c sits on 192.168.78.0/24 (same wire, other subnet)
    nodes = lab.nodes(3, config(direct=True),
                      publics=["192.168.77.1/24", "192.168.77.2/24", "192.168.78.3/24"])
    a, b, c = nodes
    for node, other_net in ((a, "192.168.78.0/24"), (b, "192.168.78.0/24"), (c, "192.168.77.0/24")):
        node.ns.ip("route", "add", other_net, "dev", "eth0")
        node.ensure_device()
    program_all(nodes)
    assert route_view(a.routes()) == [("10.244.2.0/24", "192.168.77.2", "eth0", False),
                                      ("10.244.3.0/24", "10.244.3.0", DEV, True)]
    assert [n["dst"] for n in a.neighbours()] == ["10.244.3.0"]
    assert [(f["mac"], f["dst"]) for f in a.fdb()] == [(c.mac, "192.168.78.3")]
    assert route_view(c.routes()) == [("10.244.1.0/24", "10.244.1.0", DEV, True),
                                      ("10.244.2.0/24", "10.244.2.0", DEV, True)]
    assert a.ping(b) and a.ping(c) and b.ping(c)
    assert all(engine.reconcile(n.ipr, n.plan([m.lease for m in nodes])) == Drift() for n in nodes)


def test_host_gw_routes_via_public_ips(lab):
    nodes = lab.nodes(3, config(backend="host-gw"))
    a, b, c = nodes
    drifts = program_all(nodes)
    assert [d.added for d in drifts] == [2, 2, 2]
    assert route_view(a.routes()) == [("10.244.2.0/24", "192.168.77.2", "eth0", False),
                                      ("10.244.3.0/24", "192.168.77.3", "eth0", False)]
    assert a.ns.ip_json("link", "show", "type", "vxlan") == []
    assert a.ping(b) and a.ping(c) and c.ping(b)

    a.ns.ip("route", "del", "10.244.3.0/24")
    far = Lease(ipaddress.ip_network("10.244.9.0/24"), ipaddress.ip_address("10.1.2.3"), "far",
                backend_type="host-gw")
    with pytest.raises(OverlayError) as err:
        engine.reconcile(a.ipr, a.plan([b.lease, c.lease, far]))
    assert len(err.value.errors) == 1
    assert err.value.errors[0].startswith("lease 10.244.9.0-24 (node far, 10.1.2.3): host-gw needs "
                                          "every node on one L2 network")
    assert err.value.drift.added == 1 and a.ping(c)
    assert engine.remove_peer(a.ipr, a.plan([]), c.lease).removed == 1
    assert a.cut_off(c)


def test_dual_stack_pings_over_ipv6_through_the_same_vxlan_device(lab):
    a, b = nodes = vxlan_cluster(lab, 2, ipv6=True)
    assert [d.added for d in program_all(nodes)] == [5, 5]  # 2 neighbours, 1 fdb, 2 routes
    assert route_view(a.routes(6)) == [("fd00:10:244:2::/64", "fd00:10:244:2::", DEV, True)]
    assert route_view(a.routes(4)) == [("10.244.2.0/24", "10.244.2.0", DEV, True)]
    assert sorted((n["dst"], n["lladdr"]) for n in a.neighbours()) == \
        [("10.244.2.0", b.mac), ("fd00:10:244:2::", b.mac)]
    assert [(f["mac"], f["dst"]) for f in a.fdb()] == [(b.mac, "192.168.77.2")]
    assert a.ping(b, version=6) and b.ping(a, version=6) and a.ping(b)

    a.ns.ip("-6", "route", "del", "fd00:10:244:2::/64")
    a.ns.ip("-6", "neigh", "del", "fd00:10:244:2::", "dev", DEV)
    drift = engine.reconcile(a.ipr, a.plan([b.lease]))
    assert drift.added == 2 and a.ping(b, version=6)
    gone = engine.reconcile(a.ipr, a.plan([]))
    assert (gone.added, gone.removed) == (0, 5)
    assert a.routes(6) == [] and a.neighbours() == [] and a.fdb() == []
    assert a.cut_off(b, version=6)


def test_a_failed_neighbour_holds_back_that_leases_routes_and_names_the_lease(lab):
    a, b = nodes = vxlan_cluster(lab, 2, ipv6=True)
    engine.reconcile(b.ipr, b.plan([a.lease]))
    a.ns.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{DEV.replace('.', '/')}.disable_ipv6=1"])
    with pytest.raises(OverlayError) as err:
        engine.reconcile(a.ipr, a.plan([n.lease for n in nodes]))
    assert len(err.value.errors) == 1
    assert err.value.errors[0].startswith(
        f"lease 10.244.2.0-24: cannot program neighbour fd00:10:244:2:: lladdr {b.mac} dev {DEV}: ")
    assert a.routes(4) == [] and a.routes(6) == []  # the route comes last, and never came
    assert err.value.drift.details == [f"neighbour 10.244.2.0 lladdr {b.mac} dev {DEV} was missing"]
    assert a.fdb() == []  # entries after the failed one wait for the next pass

    a.ns.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{DEV.replace('.', '/')}.disable_ipv6=0"])
    assert a.ensure_device().action == "updated"  # the IPv6 address came back
    assert engine.reconcile(a.ipr, a.plan([n.lease for n in nodes])).added == 4
    assert a.ping(b) and a.ping(b, version=6)
