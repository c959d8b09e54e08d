"""weft driven by containerd's CRI, the way kubelet drives it (Debian's containerd 1.6).

Two weft nodes (node namespaces on an underlay, real etcd, a weftd each), each with a
private containerd in the node (lab/containerd.py) and the installed weft launchers
plus /usr/lib/cni as its CNI bin dir.  The tests speak runtime.v1 CRI to containerd
(lab/cri.py) and read the result back from the kernel (`ip -j` in the node and in the
pod netns), from containerd (PodSandboxStatus, ListPodSandbox) and from weft's own
allocation history (`weftctl whois`).

Runtime handlers on every containerd (each its own cni_conf_dir):
  "" (runc)  conf/10-weft.conflist (weft + portmap) with the node's paths
  ref        bridge + host-local + portmap (the reference chain, side by side)
  static     the weft conflist asking for one fixed address (netconf args.cni.ips)
  broken     a weft conflist with an invalid IPAM range
  missing    an empty conf dir
  v110       weft alone with cniVersion 1.1.0 (newer than containerd 1.6 reads)
  v110chain  the shipped chain (weft + portmap) with cniVersion 1.1.0

A static IP through CRI: containerd 1.6 sends runtimeConfig only for portMappings,
bandwidth, dns and its pod-annotations capability; there is no CRI field for `ips`
(kubelet has none either), so "a sandbox that asks for a taken address" is written the
one way a CRI user can: a conflist whose netconf carries args.cni.ips.
"""

import ipaddress
import json
import os
import subprocess
import sys

import grpc
import pytest

from lab.cluster import REPO, Cluster, wait_for
from lab.cri import SANDBOX_READY
from lab.cri_node import CriNode, copy_conflist, weft_conflist
from lab.namespaces import suffix

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
STATIC_HOST = 200  # subnet.200 is what the "static" handler asks for


def static_conflist(cri_node):
    subnet = ipaddress.ip_network(cri_node.subnet())
    return copy_conflist(weft_conflist(cri_node.node), "weft",
                         args={"cni": {"ips": [str(subnet.network_address + STATIC_HOST)]}})


def broken_conflist(cri_node):
    conflist = weft_conflist(cri_node.node)
    conflist["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.244.300.0/24"}]]
    return conflist


def newer_version_conflist(cri_node, chained=True):
    conflist = weft_conflist(cri_node.node)
    conflist["cniVersion"] = "1.1.0"
    if not chained:
        conflist["plugins"] = conflist["plugins"][:1]  # weft alone, no portmap
    return conflist


HANDLERS = {"static": static_conflist, "broken": broken_conflist, "missing": None,
            "v110": lambda cri_node: newer_version_conflist(cri_node, chained=False),
            "v110chain": newer_version_conflist}


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, installed):
    cluster = Cluster(tmp_path_factory.mktemp("cri") / "cluster", installed)
    made = []
    try:
        cluster.set_network("weft", VXLAN)
        made = [CriNode(cluster, HANDLERS) for _ in range(2)]
        for cri_node in made:
            cri_node.start_agent()
        for cri_node in made:
            cri_node.start()
        for cri_node in made:
            wait_for(lambda: len(cri_node.node.status()["peers"]) == 1, 30,
                     what=f"{cri_node.node.name} programmed the other node's lease")
        yield made
    finally:
        for cri_node in made:
            cri_node.cleanup()
        cluster.cleanup()


@pytest.fixture
def sandboxes(nodes):
    """Run sandboxes through this; whatever a test leaves is stopped and removed."""
    started = []

    def run(cri_node, name=None, handler="", **kwargs):
        sandbox_id = cri_node.run_sandbox(name or f"pod-{suffix()}", handler, **kwargs)
        started.append((cri_node, sandbox_id))
        return sandbox_id

    yield run
    for cri_node, sandbox_id in started:
        try:
            cri_node.remove_sandbox(sandbox_id)
        except grpc.RpcError:
            pass


# -- what the kernel and weft say ------------------------------------------------


def pod_eth0(cri_node, sandbox_id):
    """(ipv4 addresses with prefix, peer ifindex in the node) of the sandbox's eth0."""
    netns = cri_node.runtime.netns_path(sandbox_id)
    link = json.loads(cri_node.runtime.in_pod(netns, ["ip", "-j", "-d", "addr", "show", "eth0"]).stdout)[0]
    addresses = [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]
    return addresses, link["link_index"]


def node_links(cri_node) -> dict:
    """{ifindex: link} of the node namespace."""
    return {link["ifindex"]: link for link in cri_node.node.ns.ip_json("-d", "link", "show")}


def pod_veths(cri_node) -> set:
    """Host-side veths on either pod bridge of the node."""
    return {link["ifname"] for link in node_links(cri_node).values()
            if link.get("master") in ("cbr0", "cni-ref")
            and link.get("linkinfo", {}).get("info_kind") == "veth"}


def reservations(cri_node) -> set:
    """Addresses weft-ipam holds on the node (host-local layout: a file per address
    under dataDir/<network>)."""
    directory = os.path.join(cri_node.node.ipam_dir, "weft")
    held = set()
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        try:
            held.add(str(ipaddress.ip_address(name)))
        except ValueError:
            pass
    return held


def whois(cri_node, address):
    exe = os.path.join(cri_node.cluster.installed, "bin", "weftctl")
    return subprocess.run([exe, "whois", address, "--data-dir", cri_node.node.ipam_dir, "--json"],
                          capture_output=True, text=True, timeout=60)


def pod_ip(cri_node, sandbox_id) -> str:
    status = cri_node.client.pod_sandbox_status(sandbox_id)
    assert status.state == SANDBOX_READY, status
    return status.network.ip


def state_of(cri_node):
    """What a failed or finished sandbox could leave: veths, reservations, netns files."""
    return pod_veths(cri_node), reservations(cri_node), cri_node.runtime.pod_netns_files()


# -- tests -----------------------------------------------------------------------


def test_versions_spoken(nodes):
    version = nodes[0].client.version()
    assert version.runtime_name == "containerd" and version.runtime_api_version == "v1"


def test_sandbox_gets_an_address_of_the_node_subnet(nodes, sandboxes):
    one = nodes[0]
    uid = f"uid-{suffix()}"
    name = f"web-{suffix()}"
    sandbox_id = sandboxes(one, name, uid=uid, namespace="team-a")
    ip = pod_ip(one, sandbox_id)
    subnet = ipaddress.ip_network(one.subnet())
    assert ipaddress.ip_address(ip) in subnet
    addresses, peer = pod_eth0(one, sandbox_id)
    assert addresses == [f"{ip}/{subnet.prefixlen}"]
    veth = node_links(one)[peer]
    assert veth["master"] == "cbr0" and veth["linkinfo"]["info_kind"] == "veth"
    # the identity containerd passes in CNI_ARGS lands in weft's allocation history
    answer = whois(one, ip)
    assert answer.returncode == 0, answer.stderr
    holder = json.loads(answer.stdout)["holders"][0]
    assert (holder["podNamespace"], holder["podName"], holder["podUID"], holder["containerID"]) == \
        ("team-a", name, uid, sandbox_id), holder
    assert ip in reservations(one)


def test_stop_and_remove_release_everything(nodes, sandboxes):
    one = nodes[0]
    sandbox_id = sandboxes(one)
    ip = pod_ip(one, sandbox_id)
    netns = os.path.basename(one.runtime.netns_path(sandbox_id))
    _, peer = pod_eth0(one, sandbox_id)
    veth = node_links(one)[peer]["ifname"]
    assert netns in one.runtime.pod_netns_files()
    one.client.stop_pod_sandbox(sandbox_id)  # CNI DEL runs here
    assert veth not in pod_veths(one) and peer not in node_links(one)
    assert ip not in reservations(one)
    assert netns not in one.runtime.pod_netns_files()
    assert one.client.pod_sandbox_status(sandbox_id).state != SANDBOX_READY
    one.client.remove_pod_sandbox(sandbox_id)
    assert sandbox_id not in {s.id for s in one.client.list_pod_sandbox()}
    assert whois(one, ip).returncode == 1  # weftctl's "nobody holds it now"


def test_host_port_reaches_the_pod_through_portmap(nodes, sandboxes):
    one, two = nodes
    host_port = 30000 + int(suffix(4), 16) % 2000
    sandbox_id = sandboxes(one, port_mappings=[("tcp", 8080, host_port)])
    ip = pod_ip(one, sandbox_id)
    in_pod = one.runtime.pod_enter(one.runtime.netns_path(sandbox_id))
    server = subprocess.Popen([*in_pod, sys.executable, "-m", "lab.tcp_echo", "serve", ip, "8080", "2"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert server.stdout.readline().strip() == "listening"
        ask = [sys.executable, "-m", "lab.tcp_echo", "ask", one.node.ip, str(host_port)]
        from_node = one.runtime.in_node(ask, check=False, cwd=REPO)
        from_other_node = two.runtime.in_node(ask, check=False, cwd=REPO)
        assert from_node.returncode == 0, f"node -> {one.node.ip}:{host_port} not answered"
        assert from_other_node.returncode == 0, f"other node -> {one.node.ip}:{host_port} not answered"
    finally:
        server.kill()
        server.wait()


def test_containerd_restart_loses_nothing(nodes, sandboxes):
    one = nodes[0]
    before = {}
    for _ in range(2):
        sandbox_id = sandboxes(one)
        before[sandbox_id] = (pod_ip(one, sandbox_id), pod_eth0(one, sandbox_id),
                              one.runtime.netns_path(sandbox_id))
    veths = pod_veths(one)
    one.runtime.stop_daemon()
    one.runtime.start_daemon()
    listed = {s.id: s.state for s in one.client.list_pod_sandbox()}
    for sandbox_id, (ip, eth0, netns) in before.items():
        assert listed.get(sandbox_id) == SANDBOX_READY
        assert pod_ip(one, sandbox_id) == ip
        assert pod_eth0(one, sandbox_id) == eth0
        assert one.runtime.netns_path(sandbox_id) == netns
        assert ip in reservations(one)
        assert one.runtime.in_node(["ping", "-c", "1", "-W", "2", ip], check=False).returncode == 0, \
            f"{ip} no longer answers from its node after the restart"
    assert pod_veths(one) == veths
    # and the restarted containerd still attaches and detaches
    sandbox_id = sandboxes(one)
    assert ipaddress.ip_address(pod_ip(one, sandbox_id)) in ipaddress.ip_network(one.subnet())


def test_twenty_sandboxes_on_two_nodes_reach_each_other(nodes, sandboxes):
    pods = []  # (node, netns path, ip)
    for index in range(20):
        cri_node = nodes[index % 2]
        sandbox_id = sandboxes(cri_node)
        pods.append((cri_node, cri_node.runtime.netns_path(sandbox_id), pod_ip(cri_node, sandbox_id)))
    assert len({ip for _, _, ip in pods}) == 20
    failures = []
    for source, netns, source_ip in pods:
        for _, _, target in pods:
            if target != source_ip and source.runtime.in_pod(
                    netns, ["ping", "-c", "1", "-W", "2", target], check=False).returncode != 0:
                failures.append(f"{source_ip} -> {target}")
    assert not failures, f"{len(failures)} of 380 pings failed: {failures[:10]}"


def test_reference_chain_side_by_side(nodes, sandboxes):
    one = nodes[0]
    weft_id, ref_id = sandboxes(one), sandboxes(one, handler="ref")
    assert ipaddress.ip_address(pod_ip(one, weft_id)) in ipaddress.ip_network(one.subnet())
    assert ipaddress.ip_address(pod_ip(one, ref_id)) in ipaddress.ip_network("10.99.1.0/24")
    assert node_links(one)[pod_eth0(one, ref_id)[1]]["master"] == "cni-ref"


def test_taken_static_address_is_refused_and_nothing_leaks(nodes, sandboxes):
    one = nodes[0]
    wanted = str(ipaddress.ip_network(one.subnet()).network_address + STATIC_HOST)
    first = sandboxes(one, handler="static")
    assert pod_ip(one, first) == wanted
    before = state_of(one)
    with pytest.raises(grpc.RpcError) as failed:
        sandboxes(one, handler="static")
    details = failed.value.details()
    assert 'plugin type="weft"' in details and wanted in details, details
    assert state_of(one) == before
    assert pod_ip(one, first) == wanted and wanted in reservations(one)


def fails_holding_nothing_until_mended(cri_node, sandboxes, handler, clean_meanwhile=True) -> str:
    """RunPodSandbox on `handler` fails; returns the gRPC error text.

    DEL fails for the same reason ADD did, so containerd 1.6 keeps the failed sandbox
    (NOTREADY, with its netns file) for a later StopPodSandbox to retry, as kubelet
    does.  Meanwhile no veth and no address reservation may exist (unless
    clean_meanwhile is False: a DEL that never reached weft); once the conflist is
    mended (the weft conflist written into the handler's dir) the retry succeeds and
    nothing at all is left."""
    before = state_of(cri_node)
    with pytest.raises(grpc.RpcError) as failed:
        sandboxes(cri_node, handler=handler)
    veths, held, _ = state_of(cri_node)
    if clean_meanwhile:
        assert (veths, held) == before[:2], "a failed RunPodSandbox left a veth or a reservation"
    kept = [s for s in cri_node.client.list_pod_sandbox() if s.runtime_handler == handler]
    assert all(s.state != SANDBOX_READY for s in kept)
    cri_node.write_conflist(handler, weft_conflist(cri_node.node))  # the operator's fix

    def retried():
        try:
            for sandbox in kept:
                cri_node.remove_sandbox(sandbox.id)
            return True
        except grpc.RpcError:
            return False  # until containerd has reloaded the conf dir

    wait_for(retried, 30, interval=0.2, what=f"StopPodSandbox/RemovePodSandbox of the failed {handler} "
             "sandbox succeeding once its conflist was fixed")
    assert state_of(cri_node) == before
    return failed.value.details()


def test_broken_conflist_error_reaches_the_caller_and_nothing_leaks(nodes, sandboxes):
    details = fails_holding_nothing_until_mended(nodes[0], sandboxes, "broken")
    assert 'plugin type="weft" failed (add)' in details and "10.244.300.0/24" in details, details


def test_missing_conflist_error_reaches_the_caller_and_nothing_leaks(nodes, sandboxes):
    details = fails_holding_nothing_until_mended(nodes[0], sandboxes, "missing")
    assert "cni plugin not initialized" in details, details


def test_the_cri_command_line_of_the_readme(nodes):
    """`python -m lab.cri` (docs/runtimes.md's by-hand recipe) against the same containerd."""
    one = nodes[0]

    def cri(*args):
        proc = subprocess.run([sys.executable, "-m", "lab.cri", one.runtime.socket, *args], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert cri("version").split()[::3] == ["containerd", "v1"]
    sandbox_id = cri("run", f"cli-{suffix()}", "--port", "tcp:8080:31999",
                     "--cgroup-parent", one.runtime.cgroup_parent).strip()
    try:
        status = json.loads(cri("status", sandbox_id))
        assert status["ready"] and ipaddress.ip_address(status["ip"]) in ipaddress.ip_network(one.subnet())
        assert f"{sandbox_id} READY" in cri("ls")
    finally:
        cri("rm", sandbox_id)
    assert sandbox_id not in cri("ls")


def test_a_cni_1_1_conflist_is_refused_by_containerd_1_6_and_nothing_leaks(nodes, sandboxes):
    """libcni 1.1.2 (containerd 1.6) knows result versions up to 1.0.0: weft's ADD
    succeeds, containerd cannot read the 1.1.0 result, fails the sandbox and runs DEL,
    which weft (supporting 1.1.0) completes: nothing is left."""
    details = fails_holding_nothing_until_mended(nodes[0], sandboxes, "v110")
    assert 'unsupported CNI result version "1.1.0"' in details, details


def test_a_cni_1_1_chain_with_portmap_holds_the_pod_until_mended(nodes, sandboxes):
    """The shipped chain at 1.1.0: DEL runs the chain backwards and Debian's portmap
    (plugins 1.1.1, CNI <= 1.0.0) refuses first, so weft's DEL never runs and the
    veth and address stay with the NOTREADY sandbox until the conflist says 1.0.0
    again; then the retried StopPodSandbox releases everything."""
    details = fails_holding_nothing_until_mended(nodes[0], sandboxes, "v110chain", clean_meanwhile=False)
    assert 'unsupported CNI result version "1.1.0"' in details, details


def test_every_pod_netns_is_gone_with_its_sandbox(nodes):
    """Run last in this module: the earlier tests' sandboxes were removed by their
    fixture, so containerd's /run/netns is empty again and no veth is left."""
    for cri_node in nodes:
        assert [s.id for s in cri_node.client.list_pod_sandbox()] == []
        assert cri_node.runtime.pod_netns_files() == []
        assert pod_veths(cri_node) == set()

