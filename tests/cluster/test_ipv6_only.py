"""An IPv6-only network (EnableIPv4 false) on real agents over an IPv4 underlay: lease
keys, subnet files, pods with only IPv6, traffic across nodes, weftctl, hostile leases,
masquerade (and IPv6Masq false leaving pod ranges routed), and an agent of the previous
version meeting IPv6-only leases.  The IPv6-only underlay is tests of its own
(the IPv6 underlay work); here the underlay also carries an IPv6 prefix (fd99::/64) so
that a pod has somewhere outside the cluster to talk to over IPv6.

The tests share one two-node cluster and run in file order.
"""

import ipaddress
import json
import os
import subprocess

import pytest

from lab import previous
from lab.cluster import Cluster, serve_tcp, wait_for

CONFIG = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd10:224::/48",
          "Backend": {"Type": "vxlan", "VNI": 1}}
PREFIX = "/weft/networks/weft/subnets/"
OUTSIDE = "fd99::fe"      # the underlay namespace's IPv6 address: outside the cluster network


def node_v6(node) -> str:
    return f"fd99::{node.index}"


@pytest.fixture(scope="module")
def six(tmp_path_factory, installed):
    cluster = Cluster(tmp_path_factory.mktemp("six"), installed)
    try:
        cluster.underlay.run(["ip", "addr", "add", f"{OUTSIDE}/64", "dev", "ul0", "nodad"])
        nodes = cluster.start_nodes(2, CONFIG)
        for node in nodes:
            node.ns.run(["ip", "addr", "add", f"{node_v6(node)}/64", "dev", "eth0", "nodad"])
        pods = [node.add_pod(name=f"p{node.index}") for node in nodes]
        yield cluster, nodes, pods
    finally:
        cluster.cleanup()


def leases(cluster) -> list:
    return json.loads(cluster.weftctl("leases", "weft", "--json").stdout)


def test_ipv6_only_leases_subnet_files_pods_and_traffic(six):
    cluster, nodes, pods = six
    rows = leases(cluster)
    assert len(rows) == 2
    for row in rows:
        subnet = ipaddress.ip_network(row["subnet"])
        assert subnet.version == 6 and subnet.subnet_of(ipaddress.ip_network("fd10:224::/48"))
        assert row["ipv6Subnet"] == row["subnet"] and subnet.prefixlen == 64
    keys = cluster.etcd.etcdctl("get", PREFIX, "--prefix", "--keys-only", check=True).stdout.split()
    assert sorted(keys) == sorted(PREFIX + f"{ipaddress.ip_network(r['subnet']).network_address}-64" for r in rows)
    for node in nodes:
        text = open(node.subnet_file()).read()
        assert "WEFT_NETWORK=" not in text and "WEFT_SUBNET=" not in text and "WEFT_IPV6_SUBNET=fd10:224:" in text
        assert node.ns.ip_json("-4", "route", "show", "proto", "119") == []
        assert [r["dev"] for r in node.ns.ip_json("-6", "route", "show", "proto", "119")] == ["weft.1"]
    for pod in pods:
        assert len(pod.ips) == 1 and ":" in pod.ip
        assert not any(e.get("addr_info") for e in pod.ns.ip_json("-4", "addr", "show", "dev", "eth0"))
    a, b = pods
    assert a.ping(b.ip) and b.ping(a.ip)
    server = b.serve_tcp(7300, 1)
    assert a.tcp(b.ip, 7300) == a.ip, "pod -> pod across nodes lost the pod's source address"
    server.wait(timeout=10)


def test_weftctl_shows_ipv6_subnets_and_addresses(six):
    cluster, nodes, pods = six
    table = cluster.weftctl("leases", "weft").stdout
    for node in nodes:
        subnet = node.status()["lease"]["ipv6Subnet"]
        line = next(line for line in table.splitlines() if f" {node.name} " in line)
        assert line.split()[:4] == ["weft", subnet, node.name, node.ip], table
    status = subprocess.run([os.path.join(cluster.installed, "bin", "weftctl"), "status", "--run-dir",
                             nodes[0].run_dir], capture_output=True, text=True, timeout=30)
    assert f"lease      {nodes[0].status()['lease']['ipv6Subnet']} (public IP {nodes[0].ip}" in status.stdout, \
        status.stdout
    assert f"{nodes[1].status()['lease']['key']} node2" in status.stdout, status.stdout
    who = cluster.weftctl("whois", pods[1].ip, "--data-dir", nodes[1].ipam_dir)
    assert f"{pods[1].ip} held by default/p2" in who.stdout, who.stdout
    published = wait_for(lambda: (out := cluster.weftctl("whois", pods[1].ip, "--cluster", check=False)).returncode
                         == 0 and out.stdout, 30, interval=0.5, what="node2's IPv6 history published to etcd")
    assert f"{pods[1].ip} held by default/p2" in published and "node node2" in published, published
    svg = cluster.weftctl("graph", "--ipam-data-dir", nodes[0].ipam_dir, "--etcd-endpoints",
                          cluster.etcd.endpoint).stdout
    assert "fd10:224::/48" in svg and nodes[0].status()["lease"]["ipv6Subnet"] in svg and pods[0].ip in svg


def test_hostile_ipv6_only_leases_are_refused_on_every_node(six):
    """Each subnet rule's IPv6 twin, written with etcdctl as a careless tool would; a valid
    control lease written after them is programmed, the rest are refused with a reason."""
    cluster, nodes, _ = six

    def value(mac, **more):
        return json.dumps({"PublicIP": "192.168.100.201", "NodeName": "hostile", "BackendType": "vxlan",
                           "BackendData": {"VNI": 1, "VtepMAC": mac}, **more})

    hostile = {
        "fd10:225:0:9::-64": (value("02:00:00:00:00:b1"), "outside-network"),
        "fd10:224:0:9::-80": (value("02:00:00:00:00:b2"), "subnet-length"),
        "fd10:224::-47": (value("02:00:00:00:00:b3"), "outside-network"),
        "10.244.9.0-24": (value("02:00:00:00:00:b4"), "outside-network"),
        "fd10:224:0:a::-64": (value("02:00:00:00:00:b5", PublicIPv6="fd10:224:0:a::9"), "public-ip"),
        "fd10:224:0:b::-64": (value("02:00:00:00:00:b6", IPv6Subnet="fd10:224:0:c::/64"), "unreadable"),
        "FD10:224:0:d::-64": (value("02:00:00:00:00:b7"), "unreadable"),
    }
    for key, (text, _) in hostile.items():
        cluster.etcd.etcdctl("put", PREFIX + key, text, check=True)
    control = "fd10:224:0:e::-64"
    cluster.etcd.etcdctl("put", PREFIX + control, value("02:00:00:00:00:c0"), check=True)
    try:
        for node in nodes:
            wait_for(lambda: "fd10:224:0:e::/64" in {r["dst"] for r in node.ns.ip_json("-6", "route", "show",
                                                                                       "proto", "119")},
                     30, what=f"{node.name} programming the control lease written after the hostile ones")
            refused = {item["key"]: item["reason"] for item in node.status()["refused"]}
            assert {k: refused.get(k) for k in hostile} == {k: r for k, (_, r) in hostile.items()}, refused
            routes = {r["dst"] for r in node.ns.ip_json("-6", "route", "show", "proto", "119")}
            assert not routes & {"fd10:225:0:9::/64", "fd10:224:0:9::/80", "fd10:224::/47", "fd10:224:0:a::/64",
                                 "fd10:224:0:b::/64", "fd10:224:0:c::/64", "fd10:224:0:d::/64"}, routes
            assert node.status()["ready"]
    finally:
        for key in [*hostile, control]:
            cluster.etcd.etcdctl("del", PREFIX + key, check=True)
    for node in nodes:
        wait_for(lambda: not node.status()["refused"] and len(node.status()["peers"]) == 1, 30,
                 what=f"{node.name} back to its one peer")


def test_masquerade_on_ipv6_only_and_ipv6masq_false_leaves_it_routed(six):
    cluster, nodes, pods = six
    a, b = pods
    server = serve_tcp(cluster.underlay, OUTSIDE, 7310, 1)
    assert a.tcp(OUTSIDE, 7310) == node_v6(nodes[0]), "pod -> outside was not masqueraded to the node's address"
    server.wait(timeout=10)
    server = b.serve_tcp(7311, 1)
    assert a.tcp(b.ip, 7311) == a.ip
    server.wait(timeout=10)
    # routed IPv6 pod ranges: IPv6Masq false, applied live; the outside routes the pods' subnet back
    subnet = nodes[0].status()["lease"]["ipv6Subnet"]
    cluster.underlay.run(["ip", "-6", "route", "add", subnet, "via", node_v6(nodes[0])])
    cluster.set_network("weft", {**CONFIG, "IPv6Masq": False})
    try:
        wait_for(lambda: "WEFT_IPV6_IPMASQ=false" in open(nodes[0].subnet_file()).read(), 20,
                 what="the subnet file saying IPv6 is not masqueraded")
        wait_for(lambda: nodes[0].status()["masquerade"]["state"] == "absent", 20,
                 what="node1's masquerade table gone: no family of its subnets is masqueraded")
        server = serve_tcp(cluster.underlay, OUTSIDE, 7312, 1)
        assert a.tcp(OUTSIDE, 7312) == a.ip, "IPv6Masq false: the pod's address must arrive unchanged"
        server.wait(timeout=10)
    finally:
        cluster.set_network("weft", CONFIG)
    wait_for(lambda: nodes[0].status()["masquerade"]["state"] == "installed", 20,
             what="node1's masquerade table back with IPv6Masq unset")
    server = serve_tcp(cluster.underlay, OUTSIDE, 7313, 1)
    assert a.tcp(OUTSIDE, 7313) == node_v6(nodes[0])
    server.wait(timeout=10)


def test_an_agent_of_the_previous_version_refuses_ipv6_only_leases_and_keeps_running(six, tmp_path):
    """A node still on the previous version serving a dual-stack network meets a lease
    in the IPv6-only form (a key that is an IPv6 subnet): it refuses it visibly (status,
    metrics) and keeps serving its network."""
    cluster, _, _ = six
    old = previous.install(str(tmp_path / "previous"), previous.BEFORE_IPV6_ONLY)
    dual = {"Network": "10.246.0.0/16", "EnableIPv6": True, "IPv6Network": "fd10:246::/48",
            "Backend": {"Type": "vxlan", "VNI": 2}}
    cluster.set_network("dual", dual)
    node = cluster.add_node()
    node.start_agent(networks=("dual",), weftd=os.path.join(old, "bin", "weftd"))
    node.wait_ready("dual")
    key = "fd10:246:0:7::-64"
    cluster.etcd.etcdctl("put", f"/weft/networks/dual/subnets/{key}", json.dumps(
        {"PublicIP": "192.168.100.77", "NodeName": "newer", "BackendType": "vxlan",
         "BackendData": {"VNI": 2, "VtepMAC": "02:00:00:00:00:d7"}, "IPv6Subnet": "fd10:246:0:7::/64"}), check=True)
    wait_for(lambda: key in {i["key"] for i in node.status("dual").get("refused") or []}, 30,
             what="the previous version's agent listing the IPv6-only lease as refused")
    item = next(i for i in node.status("dual")["refused"] if i["key"] == key)
    assert item["reason"] == "unreadable" and key in item["detail"], item
    assert node.agent.poll() is None and node.status("dual")["ready"]
    assert 'weft_lease_refusals{network="dual",reason="unreadable"} 1.0' in node.http("/metrics")[1]
    # and an IPv6-only network config: refused with its reason, the agent stays up
    six_only = {**CONFIG, "IPv6Network": "fd10:246::/48", "Backend": {"Type": "vxlan", "VNI": 2}}
    stored = cluster.set_network_raw(six_only, "--force-migrate", name="dual")  # its dual-stack lease goes
    assert stored.returncode == 0, stored.stderr
    wait_for(lambda: "EnableIPv4 false is not supported" in (node.status("dual").get("problem") or ""), 30,
             what="the previous version naming the IPv6-only config it cannot serve")
    assert node.agent.poll() is None


def test_ipv6_only_over_wireguard(cluster):
    """The WireGuard backend carries an IPv6-only network over the IPv4 underlay: allowed
    IPs and routes are the peers' IPv6 subnets only."""
    nodes = cluster.start_nodes(2, {**CONFIG, "Backend": {"Type": "wireguard"}})
    a, b = (node.add_pod() for node in nodes)
    assert a.ping(b.ip) and b.ping(a.ip)
    peer_subnet = nodes[1].status()["lease"]["ipv6Subnet"]
    assert peer_subnet in nodes[0].wg("show", "weft-wg.51820", "allowed-ips")
    assert [r["dst"] for r in nodes[0].ns.ip_json("-6", "route", "show", "proto", "119")] == [peer_subnet]
    assert nodes[0].ns.ip_json("-4", "route", "show", "proto", "119") == []
