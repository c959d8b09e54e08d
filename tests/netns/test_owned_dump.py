"""The reconcile's one reader (filtered dumps, decoded by nlcodec) returns exactly what
an independent decoder of the same kernel returns: pyroute2's, driven here by the test
(the agent no longer reads through it), and iproute2's JSON for the totals.

One node namespace holds a few hundred entries weft owns (routes of its protocol in
the main table through the VXLAN device, the underlay and a plain device; IPv4 and
IPv6; a multipath route; permanent neighbours and FDB entries of the device) next to
entries it must never read as its own (other protocols, another table, other devices'
neighbours and FDB, non-permanent neighbours).
"""

import ipaddress

import pytest

from cni_plugin import backends
from cni_plugin.backends import engine
from cni_plugin.backends.base import FDB, NEIGH, ROUTE, Device
from cni_plugin.backends.engine import Plan
from cni_plugin.backends.vxlan import VxlanData
from cni_plugin.datapath import underlay
from cni_plugin.datapath.constants import AF_INET, AF_INET6, NUD_PERMANENT, RT_TABLE_MAIN, RTNH_F_ONLINK, WEFT_RTPROT
from cni_plugin.datapath.netlink import RouteEntry, open_agent
from cni_plugin.datapath.owned_dump import open_reader
from cni_plugin.subnet.lease import Lease, NetworkConfig

PEERS = 300


def _batch(node, tool, lines, directory):
    path = directory / f"{tool}.batch"
    path.write_text("\n".join(lines) + "\n")
    node.run([tool, "-batch", str(path)])


@pytest.fixture
def populated(node, tmp_path):
    run = node.run
    for name in ("eth0", "wg0"):  # veth pairs stand in for the underlay and a plain device
        run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"])
        run(["ip", "link", "set", f"{name}p", "up"])
    run(["ip", "addr", "add", "192.168.77.1/24", "dev", "eth0"])
    run(["ip", "addr", "add", "fd77::1/64", "dev", "eth0", "nodad"])
    run(["ip", "link", "set", "eth0", "up"])
    run(["ip", "link", "set", "wg0", "up"])
    for name, vni in (("weft.1", 1), ("weft.2", 2)):
        run(["ip", "link", "add", name, "type", "vxlan", "id", str(vni), "local", "192.168.77.1",
             "dstport", "8472", "dev", "eth0", "nolearning"])
        run(["ip", "link", "set", name, "up"])
    proto = str(WEFT_RTPROT)
    ip, bridge = [], []
    for i in range(PEERS):
        sub = f"10.244.{i // 250}.{i % 250}"
        mac = f"0e:77:00:00:{i // 256:02x}:{i % 256:02x}"
        public = f"192.168.{78 + i // 250}.{1 + i % 250}"
        ip.append(f"route add 10.{100 + i // 250}.{i % 250}.0/24 via 10.{100 + i // 250}.{i % 250}.0 "
                  f"dev weft.1 onlink proto {proto}")
        ip.append(f"neigh add 10.{100 + i // 250}.{i % 250}.0 lladdr {mac} dev weft.1 nud permanent")
        bridge.append(f"fdb append {mac} dev weft.1 dst {public} self permanent")
        if i < 40:  # DirectRouting: through the underlay, by gateway
            ip.append(f"route add {sub}/32 via 192.168.77.{2 + i} dev eth0 proto {proto}")
        if i < 20:
            ip.append(f"route add fd00:10:244:{i:x}::/64 dev weft.1 proto {proto}")
            ip.append(f"neigh add fd00:10:244:{i:x}:: lladdr {mac} dev weft.1 nud permanent")
            # not ours; "proto 4", not "static": in a batch iproute2 read "static" after a
            # line with "proto 119" as 119
            ip.append(f"route add 10.200.{i}.0/24 via 192.168.77.9 dev eth0 proto 4")
            ip.append(f"route add 10.201.{i}.0/24 via 192.168.77.9 dev eth0 proto {proto} table 100")
            ip.append(f"neigh add 192.168.77.{100 + i} lladdr {mac} dev eth0 nud permanent")  # other device
            ip.append(f"neigh add 10.99.0.{i} lladdr {mac} dev weft.1 nud stale")  # not permanent
            bridge.append(f"fdb append {mac} dev weft.2 dst 192.168.79.{i + 1} self permanent")
    ip.append(f"route add 10.250.0.0/24 proto {proto} nexthop via 192.168.77.2 dev eth0 "
              f"nexthop via 192.168.77.3 dev eth0")
    ip.append(f"route add 10.251.0.0/24 dev wg0 proto {proto}")  # a device route (WireGuard-like)
    ip.append(f"route add fd77:1::/64 via fd77::2 dev eth0 proto {proto}")
    bridge.append("fdb append 00:00:00:00:00:00 dev weft.1 dst 192.168.77.2 self permanent")
    bridge.append("fdb append 00:00:00:00:00:00 dev weft.1 dst 192.168.77.3 self permanent")
    _batch(node, "ip", ip, tmp_path)
    _batch(node, "bridge", bridge, tmp_path)
    return node


class Pyroute2Reader:
    """The oracle: the same three reads through pyroute2's own decoder (what the agent's
    client did before the reconcile had one reader)."""

    def __init__(self, path):
        from pyroute2 import IPRoute

        self.ipr = IPRoute(netns=path, flags=0)

    def close(self):
        self.ipr.close()

    def routes(self, version, proto=None):
        found = []
        for msg in self.ipr.route("dump", family=AF_INET if version == 4 else AF_INET6):
            if (proto is not None and msg["proto"] != proto) or msg.get("RTA_TABLE", msg["table"]) != RT_TABLE_MAIN:
                continue
            dst = msg.get("RTA_DST") or ("0.0.0.0" if version == 4 else "::")
            gateway, oif = msg.get("RTA_GATEWAY"), msg.get("RTA_OIF")
            if oif is None and msg.get("RTA_MULTIPATH"):
                oif = msg.get("RTA_MULTIPATH")[0]["oif"]
            found.append(RouteEntry(ipaddress.ip_network(f"{dst}/{msg['dst_len']}"),
                                    ipaddress.ip_address(gateway) if gateway else None, oif,
                                    bool(msg["flags"] & RTNH_F_ONLINK)))
        return found

    def permanent_neighbours(self, ifindex):
        found = {}
        for family in (AF_INET, AF_INET6):
            for msg in self.ipr.neigh("dump", ifindex=ifindex, family=family):
                if msg["family"] == family and msg["ifindex"] == ifindex and msg["state"] & NUD_PERMANENT \
                        and msg.get("NDA_DST") is not None:
                    found[ipaddress.ip_address(msg.get("NDA_DST"))] = (msg.get("NDA_LLADDR") or "").lower()
        return found

    def fdb(self, ifindex):
        found = {}
        for msg in self.ipr.fdb("dump", ifindex=ifindex):
            if msg["ifindex"] == ifindex and msg.get("NDA_LLADDR") is not None:
                dst = msg.get("NDA_DST")
                found[msg.get("NDA_LLADDR").lower()] = (ipaddress.ip_address(dst) if dst else None,
                                                        bool(msg["state"] & NUD_PERMANENT))
        return found


def _index(node, name):
    return node.ip_json("link", "show", name)[0]["ifindex"]


def test_filtered_dumps_match_pyroute2s_decoder_entry_for_entry(populated):
    node = populated
    vx, other = _index(node, "weft.1"), _index(node, "weft.2")
    oracle = Pyroute2Reader(node.path)
    try:
        with open_reader(node.path) as dump:
            for version in (4, 6):
                for proto in (WEFT_RTPROT, None):
                    assert dump.routes(version, proto=proto) == oracle.routes(version, proto=proto)
            for index in (vx, other, _index(node, "eth0")):
                assert dump.permanent_neighbours(index) == oracle.permanent_neighbours(index)
                assert dump.fdb(index) == oracle.fdb(index)
            routes4, routes6 = dump.routes(4, proto=WEFT_RTPROT), dump.routes(6, proto=WEFT_RTPROT)
            neighbours, fdb = dump.permanent_neighbours(vx), dump.fdb(vx)
    finally:
        oracle.close()
    # and what that is, by iproute2's account: weft's main-table routes only
    assert len(routes4) == PEERS + 40 + 2 and len(routes6) == 20 + 1
    shown = {r["dst"] for r in node.ip_json("-4", "route", "show", "proto", str(WEFT_RTPROT))}
    assert {str(r.dst) if r.dst.prefixlen != 32 else str(r.dst.network_address) for r in routes4} == shown
    first = next(r for r in routes4 if r.dst == ipaddress.ip_network("10.100.0.0/24"))
    assert (first.gateway, first.oif, first.onlink) == (ipaddress.ip_address("10.100.0.0"), vx, True)
    multipath = next(r for r in routes4 if r.dst == ipaddress.ip_network("10.250.0.0/24"))
    assert multipath.oif == _index(node, "eth0") and multipath.gateway is None
    device_route = next(r for r in routes4 if r.dst == ipaddress.ip_network("10.251.0.0/24"))
    assert (device_route.gateway, device_route.oif) == (None, _index(node, "wg0"))
    assert len(neighbours) == PEERS + 20 and ipaddress.ip_address("10.99.0.1") not in neighbours
    assert neighbours[ipaddress.ip_address("fd00:10:244:1::")] == "0e:77:00:00:00:01"
    assert len(fdb) == PEERS + 1  # the all-zeros MAC once (two destinations, one key)
    assert fdb["0e:77:00:00:01:2b"] == (ipaddress.ip_address("192.168.79.50"), True)  # peer 299


def test_read_state_is_the_same_through_either_client(populated):
    """The agent's client (pyroute2 for writes) reads through the same reader."""
    node = populated
    cfg = NetworkConfig.from_dict("weftnet", {"Network": "10.0.0.0/8", "EnableIPv6": True,
                                              "IPv6Network": "fd00::/16",
                                              "Backend": {"Type": "vxlan", "VNI": 1}})
    local = Lease(subnet=ipaddress.ip_network("10.244.250.0/24"), public_ip=ipaddress.ip_address("192.168.77.1"),
                  node_name="node1", backend_type="vxlan", backend_data=VxlanData(1, "0e:77:01:00:00:01"),
                  ipv6_subnet=cfg.ipv6_subnet_for(ipaddress.ip_network("10.244.250.0/24")))
    with open_agent(node.path) as nl, open_reader(node.path) as dump:
        plan = Plan.for_network(backends.get("vxlan")(cfg.backend), cfg, local,
                                underlay.interface_of_ip(nl, local.public_ip),
                                device=Device(_index(node, "weft.1"), "weft.1"))
        state = engine.read_state(dump, plan)
        assert state == engine.read_state(nl, plan)
    kinds = {}
    for kind, _ in state:
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds == {ROUTE: PEERS + 40 + 2 + 20, NEIGH: PEERS + 20, FDB: PEERS + 1}  # fd77:1::/64: outside
