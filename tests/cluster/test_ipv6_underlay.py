"""An IPv6 underlay for every backend (real etcd over IPv6, real agents, real traffic).

Two clusters, one per module-scoped fixture (each test reads or mutates one of them;
the mutating ones run last in the file):

  six    3 nodes on an IPv6-only underlay: no IPv4 address on any interface but lo (etcd
         on fd00:100::fe), weftd started with --iface eth0 only (it finds PublicIPv6
         itself); networks for VXLAN, host-gw and WireGuard side by side, IPv6-only pods
         on each and dual-stack pods on a VXLAN one (both inner families over IPv6).
  mixed  4 nodes on an underlay carrying both families: node1 and node2 have both, node3
         only IPv6, node4 only IPv4; dual-stack pods on VXLAN, host-gw and WireGuard.
         node3 and node4 share no underlay family: each refuses the other
         (no-common-underlay), the rest of the mesh is whole.

Kernel state is read back with `ip -j`, `bridge -j` and `wg`: an oracle independent of
weft's own netlink code.
"""

import itertools
import json
import shutil

import pytest

from lab.cluster import Cluster, wait_for

from test_cross_node import assert_full_mesh

SIX_NETWORKS = {
    "vx6": {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd10:61::/48",
            "Backend": {"Type": "vxlan", "VNI": 61}},
    "hg6": {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd10:62::/48",
            "Backend": {"Type": "host-gw"}},
    "wg6": {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd10:63::/48",
            "Backend": {"Type": "wireguard", "ListenPort": 51863}},
    "vxd": {"Network": "10.64.0.0/16", "EnableIPv6": True, "IPv6Network": "fd10:64::/48",
            "Backend": {"Type": "vxlan", "VNI": 64}},
}
MIXED_NETWORKS = {
    "vx": {"Network": "10.71.0.0/16", "EnableIPv6": True, "IPv6Network": "fd10:71::/48",
           "Backend": {"Type": "vxlan", "VNI": 71}},
    "hg": {"Network": "10.72.0.0/16", "EnableIPv6": True, "IPv6Network": "fd10:72::/48",
           "Backend": {"Type": "host-gw"}},
    "wg": {"Network": "10.73.0.0/16", "EnableIPv6": True, "IPv6Network": "fd10:73::/48",
           "Backend": {"Type": "wireguard", "ListenPort": 51873}},
}
BRIDGES = {name: f"cb{name}" for name in {**SIX_NETWORKS, **MIXED_NETWORKS}}


def _start(cluster, nodes, networks: dict, discover=False):
    for name, config in networks.items():
        cluster.set_network(name, config)
    for node in nodes:
        node.start_agent(networks=tuple(networks), discover=discover)
    for node in nodes:
        for name in networks:
            node.wait_ready(name)


def _pods(cluster, networks) -> dict:
    """{network: [one pod per node]}."""
    return {name: [node.add_pod(name, conf=node.netconf(name, bridge=BRIDGES[name])) for node in cluster.nodes]
            for name in networks}


def _peer_count(node, network) -> int:
    return len((node.status(network) or {}).get("peers") or [])


def _wait_meshed(node, network, count):
    wait_for(lambda: _peer_count(node, network) == count, 30, 0.1,
             what=f"{node.name} meshed with {count} peers on {network}")


@pytest.fixture(scope="module")
def six(tmp_path_factory, installed):
    if shutil.which("wireguard-go") is None:
        pytest.fail("wireguard-go is missing: scripts/deps.sh installs it")
    cluster = Cluster(tmp_path_factory.mktemp("six"), installed, underlay="ipv6")
    try:
        nodes = [cluster.add_node() for _ in range(3)]
        _start(cluster, nodes, SIX_NETWORKS, discover=True)
        for node in nodes:
            for name in SIX_NETWORKS:
                _wait_meshed(node, name, 2)
        cluster.pods = _pods(cluster, SIX_NETWORKS)
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, installed):
    cluster = Cluster(tmp_path_factory.mktemp("mixed"), installed, underlay="dual")
    try:
        nodes = [cluster.add_node(family) for family in ("dual", "dual", "ipv6", "ipv4")]
        _start(cluster, nodes, MIXED_NETWORKS)
        for node, peers in zip(nodes, (3, 3, 2, 2)):
            for name in MIXED_NETWORKS:
                _wait_meshed(node, name, peers)
        cluster.pods = _pods(cluster, MIXED_NETWORKS)
        yield cluster
    finally:
        cluster.cleanup()


def _addresses(ns) -> list:
    return [(link["ifname"], a["local"]) for link in ns.ip_json("addr", "show") for a in link.get("addr_info", [])
            if a["family"] == "inet"]


# -- six: an IPv6-only underlay ---------------------------------------------------------------

def test_an_ipv6_only_underlay_has_no_ipv4_and_weftd_finds_its_ipv6_address(six):
    for node in six.nodes:
        assert node.ip is None
        lease = node.status("vx6")["lease"]
        assert lease["publicIP"] is None and lease["publicIPv6"] == node.ip6
        # IPv6 forwarding is on (IPv6 pods): weftd keeps eth0 accepting router advertisements
        assert node.ns.run(["cat", "/proc/sys/net/ipv6/conf/all/forwarding"]).stdout.strip() == "1"
        assert node.ns.run(["cat", "/proc/sys/net/ipv6/conf/eth0/accept_ra"]).stdout.strip() == "2"
        assert "net.ipv6.conf.eth0.accept_ra set from 1 to 2" in node.log()
        # IPv6-only pods: nothing but lo has an IPv4 address in the node or its pods
        # (the dual-stack network vxd's bridge and device are the exception by design)
        stray = [(ifname, a) for ifname, a in _addresses(node.ns) if ifname != "lo" and not ifname.endswith(".64")
                 and ifname != BRIDGES["vxd"]]
        assert stray == [], f"{node.name}: IPv4 addresses {stray}"
        for pod in (six.pods[name][node.index - 1] for name in ("vx6", "hg6", "wg6")):
            assert [a for ifname, a in _addresses(pod.ns) if ifname != "lo"] == []
            assert all(":" in ip for ip in pod.ips)
    assert [a for ifname, a in _addresses(six.underlay) if ifname != "lo"] == []
    rows = json.loads(six.weftctl("leases", "vx6", "--json").stdout)
    assert sorted(row["publicIPv6"] for row in rows) == sorted(n.ip6 for n in six.nodes)
    assert all(row["publicIP"] is None for row in rows)


def test_devices_over_an_ipv6_underlay_and_the_pod_mtu(six):
    one = six.nodes[0]
    links = {link["ifname"]: link for link in one.ns.ip_json("-d", "link", "show")}
    vxlan = links["weft-v6.61"]
    assert vxlan["linkinfo"]["info_data"]["id"] == 61 and vxlan["linkinfo"]["info_data"]["local6"] == one.ip6
    assert vxlan["mtu"] == 1500 - 70 and "weft.61" not in links
    assert f"WEFT_MTU={1500 - 70}\n" in open(one.subnet_file("vx6")).read()
    assert f"WEFT_MTU={1500 - 80}\n" in open(one.subnet_file("wg6")).read()
    assert links["weft-wg.51863"]["mtu"] == 1500 - 80
    assert "WEFT_MTU=1500\n" in open(one.subnet_file("hg6")).read()
    # VXLAN: FDB entries point at the peers' IPv6 addresses; host-gw: IPv6 next hops
    fdb = json.loads(one.ns.run(["bridge", "-j", "fdb", "show", "dev", "weft-v6.61"]).stdout)
    assert sorted(e["dst"] for e in fdb if e.get("dst")) == sorted(n.ip6 for n in six.nodes[1:])
    hg = [r for r in one.ns.ip_json("-6", "route", "show", "proto", "119") if r["dst"].startswith("fd10:62:")]
    assert sorted((r["gateway"], r["dev"]) for r in hg) == sorted((n.ip6, "eth0") for n in six.nodes[1:])
    # WireGuard: [addr]:port endpoints
    endpoints = sorted(line.split("\t")[1] for line in one.wg("show", "weft-wg.51863", "endpoints").splitlines())
    assert endpoints == sorted(f"[{n.ip6}]:51863" for n in six.nodes[1:])


@pytest.mark.parametrize("network", ["vx6", "hg6", "wg6", "vxd"])
def test_every_pair_of_pods_reaches_across_nodes(six, network):
    pods = six.pods[network]
    if network == "wg6":  # a fresh WireGuard peer needs a handshake: wait for the first
        for src, dst in itertools.permutations(pods, 2):
            wait_for(lambda: src.ping(dst.ip, wait=1), 30, 0.2, what=f"{src.node.name} -> {dst.node.name}")
    if network == "vxd":  # dual-stack pods over an IPv6-only underlay: both families
        assert all(len(pod.ips) == 2 for pod in pods)
    assert_full_mesh(pods)


def test_hostile_public_ipv6_leases_are_refused_on_every_node(six):
    forged = {"fd10:61:0:f1::-64": "::1", "fd10:61:0:f2::-64": "ff02::1", "fd10:61:0:f3::-64": "fe80::1",
              "fd10:61:0:f4::-64": "fd10:61:0:9::9", "fd10:61:0:f5::-64": "::"}
    for key, address in forged.items():
        value = {"PublicIPv6": address, "NodeName": "forged", "BackendType": "vxlan",
                 "BackendData": {"VNI": 61, "VtepMAC": "02:00:00:00:00:f1"}}
        six.etcd.etcdctl("put", f"/weft/networks/vx6/subnets/{key}", json.dumps(value), check=True)
    try:
        for node in six.nodes:
            def refused():
                rows = {r["key"]: r for r in node.status("vx6")["refused"]}
                return all(key in rows and rows[key]["reason"] == "public-ip" for key in forged)
            wait_for(refused, 20, 0.1, what=f"{node.name} refuses every forged PublicIPv6")
            routes = node.ns.ip("-6", "route", "show", "proto", "119")
            assert not [key for key in forged if key.split("-")[0] in routes]
            assert _peer_count(node, "vx6") == 2
        code, metrics = six.nodes[0].http("/metrics")
        assert 'weft_lease_refusals{network="vx6",reason="public-ip"} 5.0' in metrics
    finally:
        for key in forged:
            six.etcd.etcdctl("del", f"/weft/networks/vx6/subnets/{key}", check=True)


def test_drift_on_the_ipv6_underlay_devices_is_repaired(six):
    one, two = six.nodes[:2]
    lease = two.status("vx6")["lease"]
    mac = lease["vtepMAC"]
    one.ns.run(["bridge", "fdb", "del", mac, "dev", "weft-v6.61", "dst", two.ip6])
    hg_subnet = two.status("hg6")["lease"]["ipv6Subnet"]
    one.ns.run(["ip", "-6", "route", "del", hg_subnet])

    def restored():
        fdb = one.ns.run(["bridge", "-j", "fdb", "show", "dev", "weft-v6.61"]).stdout
        routes = one.ns.ip("-6", "route", "show", "proto", "119")
        return mac in fdb and two.ip6 in fdb and hg_subnet in routes
    wait_for(restored, 30, 0.1, what="node1 restores the FDB entry on weft-v6.61 and the host-gw route")
    assert "was missing" in one.log()
    # the IPv6-underlay device itself deleted by hand: set up again, its peers' entries back
    two.ns.run(["ip", "link", "del", "weft-v6.61"])

    def rebuilt():
        fdb = two.ns.run(["bridge", "fdb", "show", "dev", "weft-v6.61"], check=False).stdout
        return one.ip6 in fdb and six.nodes[2].ip6 in fdb
    wait_for(rebuilt, 30, 0.1, what="node2 sets weft-v6.61 up again with both peers' FDB entries")
    a, b = six.pods["vx6"][:2]
    wait_for(lambda: b.ping(a.ip, wait=1), 20, 0.1, what="vx6 traffic node2 -> node1 after the rebuild")


def test_agent_restart_keeps_traffic_and_node_removal_drops_its_peer(six):
    one, two, three = six.nodes
    one.stop_agent()
    one.start_agent(networks=tuple(SIX_NETWORKS), discover=True)
    for name in SIX_NETWORKS:
        one.wait_ready(name)
        _wait_meshed(one, name, 2)
    for name in ("vx6", "hg6", "wg6"):
        pods = six.pods[name]
        for src, dst in itertools.permutations(pods, 2):
            wait_for(lambda: src.ping(dst.ip, wait=1), 30, 0.2,
                     what=f"{name}: {src.node.name} -> {dst.node.name} after node1's restart")
    # node3 leaves: its leases revoked; node1 and node2 drop its routes and peers
    subnets = {name: three.status(name)["lease"]["ipv6Subnet"] for name in ("vx6", "hg6", "wg6")}
    leases = json.loads(six.weftctl("leases", "--json").stdout)
    three.stop_agent()
    for lease_id in {row["leaseID"] for row in leases if row.get("node") == "node3"}:
        six.etcd.etcdctl("lease", "revoke", format(lease_id, "x"), check=True)
    for node in (one, two):
        for name, subnet in subnets.items():
            wait_for(lambda: _peer_count(node, name) == 1 and subnet not in node.ns.ip("-6", "route", "show"),
                     30, 0.1, what=f"{node.name} drops node3 on {name}")
        assert three.ip6 not in node.ns.run(["bridge", "fdb", "show", "dev", "weft-v6.61"]).stdout
    assert_full_mesh([six.pods[name][0] for name in ("vx6",)] + [six.pods["vx6"][1]])


# -- mixed: both underlay families, and nodes with one ---------------------------------------

def test_each_inner_family_rides_the_underlay_the_model_picks(mixed):
    one, two, three, four = mixed.nodes
    links = {link["ifname"]: link for link in one.ns.ip_json("-d", "link", "show")}
    assert links["weft.71"]["linkinfo"]["info_data"]["local"] == one.ip
    assert links["weft-v6.71"]["linkinfo"]["info_data"]["local6"] == one.ip6
    assert f"WEFT_MTU={1500 - 70}\n" in open(one.subnet_file("vx")).read()  # the smaller of -50 and -70
    routes = {r["dst"]: r["dev"] for r in one.ns.ip_json("route", "show", "proto", "119")
              + one.ns.ip_json("-6", "route", "show", "proto", "119")}

    def lease(node, family):
        return node.status("vx")["lease"]["subnet" if family == 4 else "ipv6Subnet"]
    # node2 has both: each inner family its own; node3 only IPv6, node4 only IPv4: both on that one
    assert routes[lease(two, 4)] == "weft.71" and routes[lease(two, 6)] == "weft-v6.71"
    assert routes[lease(three, 4)] == "weft-v6.71" and routes[lease(three, 6)] == "weft-v6.71"
    assert routes[lease(four, 4)] == "weft.71" and routes[lease(four, 6)] == "weft.71"
    # host-gw: node3's IPv4 subnet via its IPv6 address (RTA_VIA), read back as equal on
    # every pass (no false drift rewriting it)
    hg = {r["dst"]: r for r in one.ns.ip_json("route", "show", "proto", "119")}
    assert hg[three.status("hg")["lease"]["subnet"]]["via"] == {"family": "inet6", "host": three.ip6}
    assert hg[four.status("hg")["lease"]["subnet"]]["gateway"] == four.ip
    last = one.status("hg")["lastReconcile"]
    wait_for(lambda: one.status("hg")["lastReconcile"] != last, 20, 0.1, what="a reconcile pass on hg")
    assert one.status("hg")["driftRepaired"] == 0 and one.status("vx")["driftRepaired"] == 0
    # node3 has no IPv4 underlay: one device only
    assert {"weft-v6.71"} == {l["ifname"] for l in three.ns.ip_json("link", "show") if l["ifname"].startswith("weft")
                              and l["ifname"].endswith(".71")}


@pytest.mark.parametrize("network", list(MIXED_NETWORKS))
def test_pods_reach_every_node_they_share_an_underlay_family_with(mixed, network):
    pods = mixed.pods[network]
    one, two, three, four = pods
    pairs = [p for p in itertools.permutations(pods, 2) if {p[0], p[1]} != {three, four}]
    failures = []
    for port, (src, dst) in enumerate(pairs, start=7100):
        for address in dst.ips:
            if network == "hg" and ":" in address and {src, dst} & {four} :
                continue  # host-gw: no IPv6 route via an IPv4 next hop (reported, below)
            if not wait_for_ping(src, address, network):
                failures.append(f"{network}: {src.node.name} -> {dst.node.name}/{address}")
    assert not failures, failures
    # no common underlay family: never programmed, and the pods do not reach each other
    for src, dst in ((three, four), (four, three)):
        assert not src.ping(dst.ip, wait=1)


def wait_for_ping(src, address, network) -> bool:
    tries = 30 if network == "wg" else 1  # a fresh WireGuard peer: a handshake first
    for _ in range(tries):
        if src.ping(address, wait=1):
            return True
    return False


def test_nodes_without_a_common_underlay_family_refuse_each_other(mixed):
    three, four = mixed.nodes[2:]
    for me, other in ((three, four), (four, three)):
        for name in MIXED_NETWORKS:
            status = me.status(name)
            other_key = other.status(name)["lease"]["subnet"].replace("/", "-")
            refused = {r["key"]: r for r in status["refused"]}
            assert refused[other_key]["reason"] == "no-common-underlay", refused
            assert "no common underlay family" in refused[other_key]["detail"]
            assert not any(other_key in line for line in status["peers"])
            routes = me.ns.ip("route", "show", "proto", "119")
            assert other.status(name)["lease"]["subnet"] not in routes
        text = me.ns.run([f"{mixed.installed}/bin/weftctl", "status", "--run-dir", me.run_dir]).stdout
        assert "REFUSED" in text and "[no-common-underlay]" in text
        code, metrics = me.http("/metrics")
        assert 'weft_lease_refusals{network="vx",reason="no-common-underlay"} 1.0' in metrics
    # host-gw: node4 shares only IPv4 with node1: its IPv6 subnet is a reported gap, its
    # IPv4 subnet routed (the dual-stack hole: never the whole peer unprogrammed)
    one = mixed.nodes[0]
    gaps = one.status("hg")["partlyRouted"]
    assert len(gaps) == 1 and four.status("hg")["lease"]["ipv6Subnet"] in gaps[0]
    assert four.status("hg")["lease"]["subnet"] in one.ns.ip("route", "show", "proto", "119")


def test_a_previous_version_agent_refuses_a_lease_without_public_ip_and_keeps_running(mixed, tmp_path):
    """Version skew: weftd of the previous version reads node3's lease (PublicIPv6 only)
    as unreadable, says so, and meshes with every node it shares IPv4 with."""
    from lab import previous

    # issue 25's parent commit: before IPv6-only networks and before IPv6 underlays
    old = previous.install(str(tmp_path / "previous"), previous.BEFORE_IPV6_ONLY)
    five = mixed.add_node("ipv4")
    five.start_agent(networks=("vx",), weftd=f"{old}/bin/weftd")
    five.wait_ready("vx")
    three = mixed.nodes[2]
    key = three.status("vx")["lease"]["subnet"].replace("/", "-")

    def refused():
        return [r for r in (five.status("vx") or {}).get("refused", []) if r["key"] == key]
    (refusal,) = wait_for(refused, 20, 0.1, what="the old agent refuses node3's lease")
    assert refusal["reason"] == "unreadable" and "PublicIP" in refusal["detail"]
    _wait_meshed(five, "vx", 3)  # node1, node2, node4: all over IPv4
    assert five.agent.poll() is None
    pod = five.add_pod("vx", conf=five.netconf("vx", bridge=BRIDGES["vx"]))
    for other in (mixed.pods["vx"][0], mixed.pods["vx"][3]):
        assert wait_for_ping(pod, other.ip, "vx"), f"old node5 -> {other.node.name}"
