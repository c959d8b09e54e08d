"""The pod's namespace handed to weftd by descriptor (issue 24, item 4): weftd in a mount
and PID namespace of its own, which shows neither /run/netns, nor mounts made after it
started, nor the node's /proc/<pid>, serves every namespace path a runtime may give;
refuses what is not a network namespace with a CNI error naming CNI_NETNS; holds no
descriptor after any call, malformed or abandoned ones included; and both halves of a
rolling upgrade (the previous version's forwarder or weftd) keep working."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lab import previous
from lab.attachment import host_veth
from lab.cluster import descriptors_kept, wait_for
from lab.cni import invoke
from lab.namespaces import Namespace, sh

from cni_plugin.cni import wire
from test_fast_path import VXLAN, fast_conf
from test_pod_path_agent import links, socket_path, store_state


def call(cni_dir, node, command, conf, netns, cid, prev=None):
    conf = {**conf, "prevResult": prev} if prev is not None else conf
    return invoke(f"{cni_dir}/weft", command, conf, container_id=cid, netns=netns, ifname="eth0",
                  cni_path=cni_dir, node=node.ns)


def pod_addresses(netns: str) -> set:
    out = sh(["nsenter", f"--net={netns}", "ip", "-j", "addr", "show"]).stdout
    return {f"{a['local']}/{a['prefixlen']}" for link in json.loads(out) if link["ifname"] == "eth0"
            for a in link["addr_info"] if a["family"] == "inet"}


def attach_and_detach(cni_dir, node, conf, netns: str, cid: str) -> None:
    """ADD (the result's sandbox is the runtime's path, the pod has the address), CHECK,
    DEL (nothing left): the calls a runtime makes over a pod's life."""
    added = call(cni_dir, node, "ADD", conf, netns, cid)
    assert added.code == 0, f"{netns}: {added}"
    result = added.json
    (pod_side,) = [i for i in result["interfaces"] if i.get("sandbox")]
    assert pod_side["sandbox"] == netns and pod_side["name"] == "eth0", result
    assert pod_addresses(netns) == {result["ips"][0]["address"]}, result
    assert host_veth(cid) in links(node.ns)
    checked = call(cni_dir, node, "CHECK", conf, netns, cid, prev=result)
    assert checked.code == 0, f"{netns}: {checked}"
    deleted = call(cni_dir, node, "DEL", conf, netns, cid)
    assert deleted.code == 0, f"{netns}: {deleted}"
    assert host_veth(cid) not in links(node.ns)  # cut off; weftd tears the pair down in the background
    wait_for(lambda: pod_addresses(netns) == set() and store_state(node) == ([], []), 10,
             what=f"the teardown of {cid} finished")


def raw_call(node, request: bytes, fds=(), hold: float = 0.0) -> bytes:
    """A request on weftd's socket with `fds` attached; what came back before the close."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(socket_path(node))
        socket.send_fds(sock, [request], list(fds))
        if hold:
            time.sleep(hold)  # then leave, as a killed `weft` does
            return b""
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # closed with our request unread
            pass
        return b"".join(chunks)


@pytest.fixture
def callers_only(tmp_path):
    """A directory whose contents only this side sees: a tmpfs mounted after weftd
    started (weftd's mount namespace is private), as a runtime's own netns directory
    (cri-dockerd's /var/run/docker/netns) would be."""
    made = []

    def make():
        directory = tmp_path / f"netns-{len(made)}"
        directory.mkdir()
        sh(["mount", "-t", "tmpfs", "-o", "size=64k", "weft-callers", str(directory)])
        sh(["mount", "--make-private", str(directory)])
        made.append(directory)
        return directory

    yield make
    for directory in reversed(made):
        for name in os.listdir(directory):
            sh(["umount", str(directory / name)], check=False)  # a namespace bound there
        sh(["umount", str(directory)], check=False)


def test_weftd_that_sees_no_runtime_netns_directory_serves_them_all_and_keeps_no_descriptor(
        cluster, callers_only):
    cluster.set_network("weft", VXLAN)
    node = cluster.add_node()
    node.start_agent(own_view=True)
    node.wait_ready()
    conf = fast_conf(node)
    cni_dir = f"{cluster.installed}/cni"
    made, sleeper = [], None
    try:
        warm = Namespace("wnh")
        made.append(warm)
        # what weftd sees: an empty /run/netns, its own /proc (the test's namespaces are not there)
        assert os.listdir(f"/proc/{node.agent_pid()}/root/run/netns") == []
        assert not os.path.exists(f"/proc/{node.agent_pid()}/root/proc/{os.getpid()}")
        attach_and_detach(cni_dir, node, conf, warm.path, "warm")  # every lazy import done
        before, threads = node.agent_descriptors(), node.agent_threads()

        # 1. ip netns add: /run/netns, hidden from weftd
        pod = Namespace("wnh")
        made.append(pod)
        attach_and_detach(cni_dir, node, conf, pod.path, "runnetns")
        # 2. a namespace bound under a directory only the runtime sees
        directory = callers_only()
        bound = str(directory / "pod")
        open(bound, "w").close()  # the mount point, as a runtime makes it
        sh(["unshare", f"--net={bound}", "true"])
        attach_and_detach(cni_dir, node, conf, bound, "ownnetnsdir")
        # 3. /proc/<pid>/ns/net of a process weftd's PID namespace does not have
        sleeper = subprocess.Popen(["unshare", "--net", "sleep", "600"])
        proc_path = f"/proc/{sleeper.pid}/ns/net"
        wait_for(lambda: os.readlink(proc_path) != os.readlink("/proc/self/ns/net"), 10,
                 what="the sleeper in its own network namespace")
        attach_and_detach(cni_dir, node, conf, proc_path, "procpath")

        # refused, with the runtime's path named, and nothing left behind
        fifo = str(directory / "fifo")
        os.mkfifo(fifo)
        plain = str(directory / "plain")
        open(plain, "w").close()
        for netns, reason in ((fifo, "is not a namespace"), (plain, "is not a namespace"),
                              ("/proc/self/ns/net", "own network namespace"),  # the node's: weftd's own
                              (str(directory / "missing"), "cannot be opened")):
            out = call(cni_dir, node, "ADD", conf, netns, "refused")
            assert out.code == 1 and out.json["code"] == 8, f"{netns}: {out}"
            assert f"CNI_NETNS {netns} " in out.json["msg"] and reason in out.json["msg"], out
            assert host_veth("refused") not in links(node.ns) and store_state(node) == ([], [])

        # a DEL whose namespace is already gone: no descriptor, and everything released
        gone = Namespace("wnh")
        made.append(gone)
        assert call(cni_dir, node, "ADD", conf, gone.path, "gone").code == 0
        gone.delete()
        assert call(cni_dir, node, "DEL", conf, gone.path, "gone").code == 0
        assert host_veth("gone") not in links(node.ns)  # cut off; released by the background teardown
        wait_for(lambda: store_state(node) == ([], []), 10, what="the teardown of gone finished")

        # requests that never reach a handler, or whose caller leaves: descriptors closed too
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "raw", "CNI_NETNS": pod.path, "CNI_IFNAME": "eth0",
               "CNI_PATH": cni_dir}
        request = wire.encode_request("weft", env, json.dumps(conf).encode())
        ns_fds = [os.open(pod.path, os.O_RDONLY), os.open(pod.path, os.O_RDONLY)]
        try:
            assert raw_call(node, request, ns_fds) == b""  # two descriptors: refused, closed
            assert raw_call(node, b"NOT WEFT\n" + request, ns_fds[:1]) == b""  # not a request
            assert raw_call(node, request[:20], ns_fds[:1]) == b""  # cut short
            raw_call(node, request, ns_fds[:1], hold=0.05)  # the caller leaves mid-ADD
        finally:
            for fd in ns_fds:
                os.close(fd)
        assert "2 descriptors came with the request" in node.log()
        out = call(cni_dir, node, "DEL", conf, pod.path, "raw")  # the runtime cleans up
        assert out.code == 0, out

        # every descriptor weftd received is closed: what it holds is what it held before
        # (a CNI worker thread started meanwhile adds its own nftables socket)
        wait_for(lambda: not descriptors_kept(before, node.agent_descriptors(), node.agent_threads() - threads),
                 30, what=f"weftd keeping none of the descriptors it received (before {before}, now "
                          f"{node.agent_descriptors()})")
        assert not [d for d in node.agent_descriptors() if d.startswith("namespace ")]
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        for ns in made:
            ns.delete()


def test_rolling_upgrade_previous_forwarder_with_new_weftd_and_new_forwarder_with_previous_weftd(
        cluster, tmp_path):
    old = previous.install(str(tmp_path / "previous"))
    cluster.set_network("weft", VXLAN)
    node = cluster.add_node()
    conf = fast_conf(node)
    new_cni, old_cni = f"{cluster.installed}/cni", f"{old}/cni"
    pod = Namespace("wnu")
    try:
        # the old forwarder sends no descriptor: the new weftd opens the path it sees
        node.start_agent()
        node.wait_ready()
        attach_and_detach(old_cni, node, conf, pod.path, "oldfwd")
        node.stop_agent()
        # ... which a weftd with no view of /run/netns cannot: what the DaemonSet's
        # /run/netns mount is still for while forwarders of the previous version run
        node.start_agent(own_view=True)
        node.wait_ready()
        out = call(old_cni, node, "ADD", conf, pod.path, "oldfwd")
        assert out.code == 1 and out.json["code"] == 8 and f"CNI_NETNS {pod.path} " in out.json["msg"], out
        node.stop_agent()
        # the previous weftd reads no ancillary data: the kernel closes the descriptor
        # the new forwarder attached, the request parses as before, that weftd opens the path
        node.start_agent(weftd=f"{old}/bin/weftd")
        node.wait_ready()
        code = "import cni_plugin.cni.wire as w; print(hasattr(w, 'send_request'))"
        assert sh([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {old + '/src'!r}); {code}"]
                  ).stdout.strip() == "False"  # really the previous protocol code
        attach_and_detach(new_cni, node, conf, pod.path, "newfwd")  # warm
        before, threads = node.agent_descriptors(), node.agent_threads()
        for trial in range(3):
            attach_and_detach(new_cni, node, conf, pod.path, f"newfwd{trial}")
        assert node.agent_descriptors() == before
    finally:
        node.stop_agent(signal.SIGTERM)
        pod.delete()
