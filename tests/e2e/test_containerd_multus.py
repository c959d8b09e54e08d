"""Multus in front of weft under containerd's CRI (1.6 and 2.1): the runtime calls
Multus, Multus calls weft.

One weft node (real etcd, one weftd serving `weft` and `weft2`) with a private
containerd (lab/cri_node.py) whose default handler's conflist is
conf/multus/00-multus.conflist with the node's paths, at the cniVersion the release's
libcni reads (as shipped, 1.0.0, on 1.6; 1.1.0 on 2.1), and the Multus binary beside
weft in containerd's CNI bin dir.  Cross-node traffic, CHECK, GC and agent restarts through
Multus are in tests/cluster/test_multus.py; this is the runtime's side of it.
"""

import ipaddress
import json
import os

import pytest

from lab.attachment import wait_torn_down
from lab.cluster import Cluster
from lab.cnitool import inet, ipam_state
from lab.containerd import RELEASES, release
from lab.cri_node import CriNode
from lab.multus import delegate_calls, node_conflist
from lab.runtimes import multus

NETWORKS = {"weft": ("10.244.0.0/16", 1), "weft2": ("10.245.0.0/16", 2)}


@pytest.fixture(scope="module", params=RELEASES, ids=[f"containerd{name}" for name in RELEASES])
def cri_node(request, tmp_path_factory, installed):
    binary = multus()  # a clear error when `make deps` has not fetched it
    which = release(request.param)
    cluster = Cluster(tmp_path_factory.mktemp("crimultus") / "cluster", installed)
    made = None
    try:
        for name, (network, vni) in NETWORKS.items():
            cluster.set_network(name, {"Network": network, "Backend": {"Type": "vxlan", "VNI": vni}})
        made = CriNode(cluster, {"": lambda cri: node_conflist(cri.node, cri.runtime.bin_dir, which.cni_version)},
                       which=which)
        os.symlink(binary, os.path.join(made.runtime.bin_dir, "multus"))
        made.start_agent(networks=tuple(NETWORKS))
        made.node.wait_ready("weft2")
        made.start()  # waits for weft's lease, writes the conflists, starts containerd
        yield made
    finally:
        if made is not None:
            made.cleanup()
        cluster.cleanup()


def pod_links(cri_node, sandbox_id) -> dict:
    netns = cri_node.runtime.netns_path(sandbox_id)
    out = cri_node.runtime.in_pod(netns, ["ip", "-j", "addr", "show"]).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def pod_default_routes(cri_node, sandbox_id) -> list:
    netns = cri_node.runtime.netns_path(sandbox_id)
    return json.loads(cri_node.runtime.in_pod(netns, ["ip", "-j", "route", "show", "default"]).stdout)


def weft_veths(cri_node) -> set:
    return {link["ifname"] for link in cri_node.node.ns.ip_json("link", "show", "type", "veth")
            if link["ifname"].startswith("wft")}


def test_run_pod_sandbox_through_multus_gives_eth0_and_net1_and_stop_releases_both(cri_node):
    node = cri_node.node
    (written,) = os.listdir(cri_node.runtime.conf_dirs[""])
    conflist = json.load(open(os.path.join(cri_node.runtime.conf_dirs[""], written)))
    assert conflist["cniVersion"] == cri_node.release.cni_version
    assert [p["type"] for p in conflist["plugins"]] == ["multus"]
    sandbox = cri_node.run_sandbox("web-0")
    links = pod_links(cri_node, sandbox)
    addresses = {}
    for network, ifname in (("weft", "eth0"), ("weft2", "net1")):
        (address,) = inet(links[ifname])
        lease = ipaddress.ip_network(node.status(network)["lease"]["subnet"])
        assert ipaddress.ip_interface(address).ip in lease, (ifname, address, lease)
        addresses[network] = address.split("/")[0]
    assert [r["dev"] for r in pod_default_routes(cri_node, sandbox)] == ["eth0"]
    status = cri_node.client.pod_sandbox_status(sandbox)
    assert status.network.ip == addresses["weft"]  # containerd reports the result Multus returned: eth0's
    assert len(weft_veths(cri_node)) == 2
    assert [c[2:] for c in delegate_calls(node) if c[:2] == ("ADD", "web-0")] == [("weft", "eth0"), ("weft2", "net1")]
    for network, address in addresses.items():
        assert ipam_state(node.dir, network)[0] == [address]
        whois = node.cluster.weftctl("whois", address, "--data-dir", node.ipam_dir, "--json")
        (holder,) = json.loads(whois.stdout)["holders"]
        assert (holder["podNamespace"], holder["podName"], holder["containerID"]) == ("default", "web-0", sandbox)

    cri_node.client.stop_pod_sandbox(sandbox)  # containerd's DEL: Multus removes net1, then eth0
    assert weft_veths(cri_node) == set()  # cut off at once; weftd tears down the rest meanwhile
    wait_torn_down(os.path.join(node.dir, "weft"))
    assert ipam_state(node.dir, "weft")[0] == [] and ipam_state(node.dir, "weft2")[0] == []
    assert [c[2:] for c in delegate_calls(node) if c[:2] == ("DEL", "web-0")][:2] == [("weft2", "net1"), ("weft", "eth0")]
    cri_node.client.remove_pod_sandbox(sandbox)
    assert cri_node.client.list_pod_sandbox() == []
    assert cri_node.runtime.pod_netns_files() == []
    assert os.listdir(os.path.join(node.dir, "multus")) in ([], ["results"])
    assert os.listdir(os.path.join(node.dir, "multus", "results")) == []
