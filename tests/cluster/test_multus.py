"""The real Multus (4.3, thin plugin) in front of two weft networks on a two-node cluster.

Each node runs one weftd serving `weft` (10.244.0.0/16, VNI 1, bridge cbr0) and `weft2`
(10.245.0.0/16, VNI 2, bridge cbr1, subnet file weft2.env), the configs of docs/runtimes.md.
Pods are made by calling the Multus binary inside the node with the CNI environment a
runtime gives it (CNI_ARGS K8S_POD_*) and conf/multus/00-multus.conflist, pointed at the
node's paths, on stdin.  cniVersion 1.1.0 throughout, as containerd 2 with plugins 1.9
would run it (tests/e2e/test_containerd_multus.py runs the file as shipped, 1.0.0, under
containerd 1.6).  Without a kubeconfig Multus runs its `delegates`: weft as eth0, weft2 as
net1.  Everything is read back from the kernel, weft-ipam's store and weftctl.
"""

import ipaddress
import json
import os
import sys

import pytest

from cni_plugin.datapath.naming import host_veth_name
from lab.cluster import REPO, Cluster, serve_tcp, wait_for
from lab.cnitool import ipam_state, veths
from lab.multus import MultusPod, delegate_calls, node_conflist
from lab.runtimes import multus

NETWORKS = {"weft": ("10.244.0.0/16", 1, "cbr0", "eth0"), "weft2": ("10.245.0.0/16", 2, "cbr1", "net1")}
VERSION = "1.1.0"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, installed):
    multus()  # a clear error when `make deps` has not fetched it
    made = Cluster(tmp_path_factory.mktemp("multus") / "cluster", installed)
    try:
        for name, (network, vni, _, _) in NETWORKS.items():
            made.set_network(name, {"Network": network, "Backend": {"Type": "vxlan", "VNI": vni}})
        nodes = [made.add_node() for _ in range(2)]
        for node in nodes:
            node.start_agent(networks=tuple(NETWORKS))
        for node in nodes:
            wait_ready_and_meshed(node)
        yield made
    finally:
        made.cleanup()


def wait_ready_and_meshed(node):
    for network in NETWORKS:
        node.wait_ready(network)
        wait_for(lambda: len(node.status(network)["peers"]) == 1, 30,
                 what=f"{node.name} programmed the other node's {network} lease")


def cni_path(cluster) -> str:
    return f"{os.path.dirname(multus())}:{cluster.installed}/cni"


def add_pod(cluster, node, name) -> MultusPod:
    pod = MultusPod.add(node, node_conflist(node, f"{cluster.installed}/cni", VERSION), cni_path(cluster), name)
    node.pods.append(pod)  # the node's cleanup removes its namespace
    return pod


@pytest.fixture(scope="module")
def pods(cluster):
    """web-1 on node1, web-2 on node2, each attached by Multus; DEL through Multus at the end."""
    made = [add_pod(cluster, node, f"web-{node.index}") for node in cluster.nodes]
    yield made
    for pod in made:
        pod.call("DEL")


def subnet(node, network) -> str:
    return node.status(network)["lease"]["subnet"]


def gateway(node, network) -> str:
    return str(ipaddress.ip_network(subnet(node, network)).network_address + 1)


def in_subnet(address: str, cidr: str) -> bool:
    return ipaddress.ip_interface(address).ip in ipaddress.ip_network(cidr)


def node_veths(node, bridge) -> set:
    return {link["ifname"] for link in node.ns.ip_json("link", "show", "master", bridge)
            if link["ifname"].startswith("wft")}


def weft_calls(node) -> list:
    """(command, via) of every call weft logged on the node (its logFile, a JSON line each)."""
    try:
        with open(os.path.join(node.dir, "weft.log")) as log:
            return [(entry["command"], entry["via"]) for entry in map(json.loads, log)]
    except FileNotFoundError:
        return []


def whois(cluster, node, address) -> list:
    """Holders of `address` in the node's weft-ipam store (weftctl whois --data-dir)."""
    out = cluster.weftctl("whois", address, "--data-dir", node.ipam_dir, "--json", check=False)
    assert out.returncode in (0, 1), out.stderr  # 1: nobody holds it
    return json.loads(out.stdout)["holders"] if out.returncode == 0 else []


# -- attachment -----------------------------------------------------------------------


def test_each_pod_gets_eth0_on_weft_and_net1_on_weft2(cluster, pods):
    for pod in pods:
        node = pod.node
        for network, (_, _, bridge, ifname) in NETWORKS.items():
            (address,) = pod.addresses(ifname)
            assert in_subnet(address, subnet(node, network)), (pod.name, ifname, address)
            assert host_veth_name(pod.cid, ifname) in node_veths(node, bridge), (pod.name, ifname)
        defaults = pod.ns.ip_json("route", "show", "default")
        assert [(r["dev"], r["gateway"]) for r in defaults] == \
            [("eth0", gateway(node, "weft"))], "only the primary carries the default route"
        routes = {r["dst"]: r["dev"] for r in pod.ns.ip_json("route", "show")}
        assert routes["10.245.0.0/16"] == "net1" and routes["10.244.0.0/16"] == "eth0"
        # Multus returns the first delegate's result: eth0 alone, in the runtime's cniVersion
        assert pod.result["cniVersion"] == VERSION
        assert [ip["address"] for ip in pod.result["ips"]] == pod.addresses("eth0")
        assert [i["name"] for i in pod.result["interfaces"] if i.get("sandbox")] == ["eth0"]
        assert [c[2:] for c in delegate_calls(node) if c[:2] == ("ADD", pod.name)] == \
            [("weft", "eth0"), ("weft2", "net1")], "Multus ran its delegates in order"


def test_traffic_crosses_nodes_on_both_networks(pods):
    a, b = pods
    assert a.ping(b.ip("eth0")) and b.ping(a.ip("eth0"))
    assert a.ping(b.ip("net1")) and b.ping(a.ip("net1"))
    # the server sees the client's own address on the network it was reached on
    for ifname in ("eth0", "net1"):
        server = serve_tcp(b.ns, b.ip(ifname), 7000, 1)
        try:
            seen = a.ns.run([sys.executable, "-m", "lab.tcp_echo", "ask", b.ip(ifname), "7000"],
                            check=False, cwd=REPO)
            assert seen.returncode == 0 and seen.stdout.strip() == a.ip(ifname), (ifname, seen)
        finally:
            server.wait(timeout=10)


def test_whois_names_the_pod_for_both_addresses(cluster, pods):
    for pod in pods:
        for network, (_, _, _, ifname) in NETWORKS.items():
            (holder,) = whois(cluster, pod.node, pod.ip(ifname))
            assert (holder["podNamespace"], holder["podName"], holder["containerID"], holder["ifname"]) == \
                ("default", pod.name, pod.cid, ifname)
    # and cluster-wide, from the history each weftd publishes to etcd
    pod = pods[1]
    for ifname in ("eth0", "net1"):
        text = wait_for(lambda: _held_by(cluster, pod.ip(ifname)), 30, interval=0.5,
                        what=f"{pod.ip(ifname)} published to etcd")
        assert f"held by default/{pod.name}" in text and "node node2" in text


def _held_by(cluster, address):
    out = cluster.weftctl("whois", address, "--cluster", check=False).stdout
    return out if "held by" in out else None


def test_check_gc_and_status_through_multus(cluster, pods):
    a = pods[0]
    checked = a.call("CHECK")
    assert checked.code == 0, str(checked)
    assert [c[2:] for c in delegate_calls(a.node) if c[:2] == ("CHECK", a.name)] == \
        [("weft", "eth0"), ("weft2", "net1")]
    # GC as containerd 2 sends it: Multus collects on its first delegate with the
    # attachments of its own cache; both of every live pod's interfaces stay
    before = {pod.name: (pod.addresses("eth0"), pod.addresses("net1")) for pod in pods}
    kept = {network: (node_veths(a.node, bridge), ipam_state(a.node.dir, network)[0])
            for network, (_, _, bridge, _) in NETWORKS.items()}
    collections = weft_calls(a.node).count(("GC", "agent"))
    gc = a.call("GC", **{"cni.dev/valid-attachments": [{"containerID": a.cid, "ifname": "eth0"}]})
    assert gc.code == 0, str(gc)
    assert weft_calls(a.node).count(("GC", "agent")) == collections + 1, "the first delegate only"
    asked = weft_calls(a.node).count(("STATUS", "agent"))
    status = a.call("STATUS")
    assert status.code == 0 and weft_calls(a.node).count(("STATUS", "agent")) == asked + 1, str(status)
    assert {pod.name: (pod.addresses("eth0"), pod.addresses("net1")) for pod in pods} == before
    assert {network: (node_veths(a.node, bridge), ipam_state(a.node.dir, network)[0])
            for network, (_, _, bridge, _) in NETWORKS.items()} == kept
    assert a.ping(pods[1].ip("net1"))
    # a pod whose net1 lost its address fails CHECK through Multus, naming the network
    broken = add_pod(cluster, a.node, "broken-0")
    try:
        broken.ns.run(["ip", "addr", "flush", "dev", "net1"])
        failed = broken.call("CHECK")
        assert failed.code != 0 and "weft2" in failed.stdout, str(failed)
    finally:
        assert broken.call("DEL").code == 0


def test_del_through_multus_removes_both_and_releases_both_addresses(cluster):
    node = cluster.nodes[0]
    pod = add_pod(cluster, node, "gone-0")
    held = {network: pod.ip(ifname) for network, (_, _, _, ifname) in NETWORKS.items()}
    for network, address in held.items():
        assert address in ipam_state(node.dir, network)[0]
    deleted = pod.call("DEL")
    assert deleted.code == 0, str(deleted)
    # cut off at once; the pod's ends go and the addresses are released by weftd's background teardown
    wait_for(lambda: not any(held[network] in ipam_state(node.dir, network)[0] for network in NETWORKS)
             and [link["ifname"] for link in pod.ns.ip_json("link", "show")] == ["lo"], 10,
             what="both teardowns finished")
    for network, (_, _, _, ifname) in NETWORKS.items():
        assert host_veth_name(pod.cid, ifname) not in veths(node.ns)
        assert whois(cluster, node, held[network]) == []
    assert [c[2:] for c in delegate_calls(node) if c[:2] == ("DEL", pod.name)] == \
        [("weft2", "net1"), ("weft", "eth0")], "DEL in reverse"
    assert not os.path.exists(os.path.join(node.dir, "multus", pod.cid)), "Multus forgot its cached delegates"
    again = pod.call("DEL")  # a runtime retrying DEL
    assert again.code == 0, str(again)


def test_an_agent_restart_keeps_both_networks(cluster, pods):
    node = cluster.nodes[1]
    leases = {network: subnet(node, network) for network in NETWORKS}
    held = {network: ipam_state(node.dir, network)[0] for network in NETWORKS}
    node.stop_agent()
    node.start_agent(networks=tuple(NETWORKS))
    wait_ready_and_meshed(node)
    assert {network: subnet(node, network) for network in NETWORKS} == leases
    assert {network: ipam_state(node.dir, network)[0] for network in NETWORKS} == held
    a, b = pods
    for ifname in ("eth0", "net1"):
        assert a.ping(b.ip(ifname)) and b.ping(a.ip(ifname)), ifname
    checked = b.call("CHECK")
    assert checked.code == 0, str(checked)
    assert weft_calls(node)[-2:] == [("CHECK", "agent")] * 2, "served by the restarted agent"
