"""weft driven by containerd's CRI, the way kubelet drives it: a matrix over
containerd 1.6 (Debian 12's) and 2.1 (2.1.9 from Debian sid, unpacked by `make deps`).

Per leg (the module fixture `nodes` is parametrized by release; every test runs on
both): two weft nodes (node namespaces on an underlay, real etcd, a weftd each), each
with a private containerd of that release in the node (lab/containerd.py) and a CNI
bin dir of the installed weft launchers plus that release's reference plugins (Debian
12's 1.1.1 beside 1.6, 1.9.1 beside 2.1).  Every conflist says the cniVersion the
leg's libcni reads: 1.0.0 on 1.6 (libcni 1.1.2), 1.1.0 on 2.1 (a libcni of CNI
1.1, which also sends STATUS).  The tests speak runtime.v1 CRI to containerd (lab/cri.py) and
read the result back from the kernel (`ip -j` in the node and in the pod netns), from
containerd (Status, PodSandboxStatus, ListPodSandbox) and from weft itself (its
allocation history through `weftctl whois`, its per-call log).

Runtime handlers on every containerd (each its own cni_conf_dir):
  "" (runc)   conf/10-weft.conflist (weft + portmap) with the node's paths
  ref         bridge + host-local + portmap (the reference chain, side by side)
  static      the weft conflist asking for one fixed address (netconf args.cni.ips)
  broken      a weft conflist with an invalid IPAM range
  missing     an empty conf dir
  other       weft alone at the other cniVersion (1.1.0 on the 1.6 leg, 1.0.0 on 2.1)
  otherchain  the shipped chain (weft + portmap) at the other cniVersion

Version-specific behaviour (tests that assert it say which leg does what): 1.6 refuses
1.1.0 conflists and never calls STATUS, so its NetworkReady ignores weft; 2.1 reads
1.0.0 and 1.1.0 and asks weft's STATUS on every CRI Status call (default handler only).

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

from lab.attachment import wait_torn_down
from lab.cluster import REPO, Cluster, wait_for
from lab.containerd import RELEASES, release
from lab.cri import SANDBOX_READY
from lab.cri_node import CriNode, copy_conflist
from lab.namespaces import sh, suffix

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
STATIC_HOST = 200  # subnet.200 is what the "static" handler asks for


def static_conflist(cri_node):
    subnet = ipaddress.ip_network(cri_node.subnet())
    return copy_conflist(cri_node.weft_conflist(), "weft",
                         args={"cni": {"ips": [str(subnet.network_address + STATIC_HOST)]}})


def broken_conflist(cri_node):
    conflist = cri_node.weft_conflist()
    conflist["plugins"][0]["ipam"]["ranges"] = [[{"subnet": "10.244.300.0/24"}]]
    return conflist


def other_version(cri_node) -> str:
    """The cniVersion the leg's conflists do not say: 1.1.0 on 1.6, 1.0.0 on 2.1."""
    return "1.1.0" if cri_node.release.cni_version == "1.0.0" else "1.0.0"


def other_version_conflist(cri_node, chained=True):
    conflist = cri_node.weft_conflist()
    conflist["cniVersion"] = other_version(cri_node)
    if not chained:
        conflist["plugins"] = conflist["plugins"][:1]  # weft alone, no portmap
    return conflist


HANDLERS = {"static": static_conflist, "broken": broken_conflist, "missing": None,
            "other": lambda cri_node: other_version_conflist(cri_node, chained=False),
            "otherchain": other_version_conflist}


@pytest.fixture(scope="module", params=RELEASES, ids=[f"containerd{name}" for name in RELEASES])
def nodes(request, tmp_path_factory, installed):
    which = release(request.param)
    cluster = Cluster(tmp_path_factory.mktemp("cri") / "cluster", installed)
    made = []
    try:
        cluster.set_network("weft", VXLAN)
        made = [CriNode(cluster, HANDLERS, which) for _ in range(2)]
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


def network_ready(cri_node) -> tuple:
    """CRI Status's NetworkReady condition: (status, reason, message)."""
    return cri_node.client.conditions()["NetworkReady"]


def plugin_calls(cri_node, command: str) -> list:
    """weft's log records of `command` calls on the node, oldest first."""
    return [record for record in cri_node.node.plugin_log() if record.get("command") == command]


def state_of(cri_node):
    """What a failed or finished sandbox could leave: veths, reservations, netns files
    (once weftd finished tearing down the DELs it served)."""
    wait_torn_down(os.path.join(cri_node.node.dir, "weft"))
    return pod_veths(cri_node), reservations(cri_node), cri_node.runtime.pod_netns_files()


# -- tests -----------------------------------------------------------------------


def test_versions_spoken(nodes):
    version = nodes[0].client.version()
    assert version.runtime_name == "containerd" and version.runtime_api_version == "v1"
    assert version.runtime_version.startswith(nodes[0].release.name + "."), version


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
    one.client.stop_pod_sandbox(sandbox_id)  # CNI DEL runs here: the pod is cut off at once
    assert veth not in pod_veths(one)
    wait_torn_down(os.path.join(one.node.dir, "weft"))  # weftd tears the rest down meanwhile
    assert peer not in node_links(one) and ip not in reservations(one)
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

    containerd 1.6: DEL fails for the same reason ADD did, so containerd keeps the
    failed sandbox (NOTREADY, with its netns file) for a later StopPodSandbox to retry,
    as kubelet does.  containerd 2.1 lists no sandbox after a failed setup.  Meanwhile
    no veth and no address reservation may exist (unless clean_meanwhile is False: a
    DEL that never reached weft); once the conflist is mended (the weft conflist
    written into the handler's dir) the retry succeeds and nothing at all is left."""
    before = state_of(cri_node)
    with pytest.raises(grpc.RpcError) as failed:
        sandboxes(cri_node, handler=handler)
    veths, held, _ = state_of(cri_node)
    if clean_meanwhile:
        assert (veths, held) == before[:2], "a failed RunPodSandbox left a veth or a reservation"
    kept = [s for s in cri_node.client.list_pod_sandbox() if s.runtime_handler == handler]
    assert all(s.state != SANDBOX_READY for s in kept)
    if cri_node.release.name == "2.1":
        assert kept == [], "containerd 2.1 removed the sandboxes whose setup failed until now"
    cri_node.write_conflist(handler, cri_node.weft_conflist())  # the operator's fix

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


def runs_and_releases(cri_node, sandboxes, handler):
    """A sandbox on `handler` gets an address of the node's subnet; StopPodSandbox
    leaves nothing (a DEL through the whole chain)."""
    before = state_of(cri_node)
    sandbox_id = sandboxes(cri_node, handler=handler)
    assert ipaddress.ip_address(pod_ip(cri_node, sandbox_id)) in ipaddress.ip_network(cri_node.subnet())
    cri_node.remove_sandbox(sandbox_id)
    assert state_of(cri_node) == before


def test_weft_alone_at_the_other_cni_version(nodes, sandboxes):
    """containerd 1.6, 1.1.0: libcni 1.1.2 knows result versions up to 1.0.0: weft's ADD
    succeeds, containerd cannot read the 1.1.0 result, fails the sandbox and runs DEL,
    which weft (supporting 1.1.0) completes: nothing is left.
    containerd 2.1, 1.0.0: its libcni reads every version up to 1.1.0; a 1.0.0
    conflist (what the installer writes when the node's plugins are older) works."""
    if nodes[0].release.name == "1.6":
        details = fails_holding_nothing_until_mended(nodes[0], sandboxes, "other")
        assert 'unsupported CNI result version "1.1.0"' in details, details
    else:
        runs_and_releases(nodes[0], sandboxes, "other")


def test_the_shipped_chain_at_the_other_cni_version(nodes, sandboxes):
    """containerd 1.6, 1.1.0: DEL runs the chain backwards and Debian's portmap (plugins
    1.1.1, CNI <= 1.0.0) refuses first, so weft's DEL never runs and the veth and
    address stay with the NOTREADY sandbox until the conflist says 1.0.0 again; then
    the retried StopPodSandbox releases everything.
    containerd 2.1, 1.0.0: weft + portmap 1.9.1 at 1.0.0 attach and detach."""
    if nodes[0].release.name == "1.6":
        details = fails_holding_nothing_until_mended(nodes[0], sandboxes, "otherchain", clean_meanwhile=False)
        assert 'unsupported CNI result version "1.1.0"' in details, details
    else:
        runs_and_releases(nodes[0], sandboxes, "otherchain")


def test_cri_status_asks_weft_on_2_1_only(nodes):
    """containerd 2.1 answers CRI Status by sending STATUS through the default
    handler's conflist (its libcni reads conflists at 1.1.0), once per Status call; weft
    answers it in weftd.  Only the default handler is asked: the other handlers'
    weft conflists log to the same file and add no record.  containerd 1.6's libcni
    has no STATUS: NetworkReady only says that a conflist was loaded."""
    one = nodes[0]
    before = len(plugin_calls(one, "STATUS"))
    assert network_ready(one) == (True, "", "")
    asked = [(record["exit"], record["via"]) for record in plugin_calls(one, "STATUS")[before:]]
    assert asked == ([(0, "agent")] if one.release.name == "2.1" else []), asked


def test_an_unusable_ipam_store_turns_network_ready_false_on_2_1(nodes):
    """The IPAM store's file system turns read-only (bound read-only in containerd's
    mount namespace and in weftd's): weft's STATUS answers 50 naming the store, and containerd 2.1
    reports NetworkReady false with weft's message (kubelet then marks the node
    NotReady and schedules no new pods there).  1.6 never asks."""
    one = nodes[0]
    ipam = one.node.ipam_dir
    # containerd's mount namespace (where `weft` runs) and weftd's own (it serves STATUS)
    where = [one.runtime.in_node,
             lambda argv: sh(["nsenter", "-t", str(one.node.agent_pid()), "--mount", *argv])]
    for run in where:
        run(["mount", "-n", "--bind", ipam, ipam])
    try:
        for run in where:
            run(["mount", "-n", "-o", "remount,bind,ro", ipam])
        ready, reason, message = network_ready(one)
    finally:
        for run in where:
            run(["umount", "-n", ipam])
    if one.release.name == "2.1":
        assert not ready and reason == "NetworkPluginNotReady", (ready, reason, message)
        # libcni hands on the plugin's msg as it is (no "plugin type=... failed" prefix)
        assert message.startswith(f"Network plugin returns error: IPAM store {ipam}/weft is not usable") \
            and "Read-only file system" in message, message
        assert plugin_calls(one, "STATUS")[-1]["error"]["code"] == 50
    else:
        assert ready, (reason, message)
    assert network_ready(one) == (True, "", "")


def test_a_weftd_restart_keeps_the_node_network_ready(nodes, sandboxes):
    """A rolling update of weftd (stop, start) must not flap NetworkReady: while weftd
    is down, `weft` runs the calls itself (standalone) from the subnet file weftd left
    in /run, so STATUS still answers 0 and a new sandbox still gets its address; the
    starting weftd answers from the same file before its lease is confirmed.  Only a
    node without a subnet file (never leased, or /run wiped and weftd not back) is
    not ready: STATUS 50 naming the file (2.1; 1.6 never asks)."""
    one = nodes[0]
    seen = []  # NetworkReady at every step of the restart
    asked_before = len(plugin_calls(one, "STATUS"))
    one.node.stop_agent()
    try:
        seen.append(network_ready(one))
        sandbox_id = sandboxes(one)
        assert ipaddress.ip_address(pod_ip(one, sandbox_id)) in ipaddress.ip_network(one.subnet())
        assert [r["via"] for r in plugin_calls(one, "ADD") if r["containerID"] == sandbox_id] == ["standalone"]
        seen.append(network_ready(one))
        subnet_file = one.node.subnet_file()
        os.rename(subnet_file, subnet_file + ".away")
        try:
            without_lease = network_ready(one)
        finally:
            os.rename(subnet_file + ".away", subnet_file)
    finally:
        one.start_agent()

    def started():
        seen.append(network_ready(one))
        return (one.node.status() or {}).get("ready")

    wait_for(started, 30, interval=0.1, what=f"{one.node.name}'s weftd ready again")
    seen.append(network_ready(one))  # asked of the new weftd (its socket is up before it is ready)
    assert all(ready for ready, _, _ in seen), [entry for entry in seen if not entry[0]]
    if one.release.name == "2.1":
        ready, reason, message = without_lease
        assert not ready and reason == "NetworkPluginNotReady", without_lease
        assert f"subnet file {subnet_file} does not exist" in message, message
        assert any(r.get("error", {}).get("code") == 50 and r["via"] == "standalone"
                   for r in plugin_calls(one, "STATUS")[asked_before:])
        assert {r["via"] for r in plugin_calls(one, "STATUS")[asked_before:]} == {"standalone", "agent"}
    else:
        assert without_lease == (True, "", "")
    sandbox_id = sandboxes(one)
    assert [r["via"] for r in plugin_calls(one, "ADD") if r["containerID"] == sandbox_id] == ["agent"]


def test_every_pod_netns_is_gone_with_its_sandbox(nodes):
    """Run last in this module: the earlier tests' sandboxes were removed by their
    fixture, so containerd's /run/netns is empty again and no veth is left."""
    for cri_node in nodes:
        assert [s.id for s in cri_node.client.list_pod_sandbox()] == []
        assert cri_node.runtime.pod_netns_files() == []
        assert pod_veths(cri_node) == set()
        # neither release sends GC (containerd 2.1.9's go-cni has no GC call): stale
        # attachments are removed by the DEL of StopPodSandbox, not by garbage collection
        assert plugin_calls(cri_node, "GC") == [], "containerd now sends GC: say so in docs/runtimes.md"

