"""The DaemonSet's installer (conf/image/weft-install) choosing the conflist's cniVersion
from the plugins in the node's bin dir and the runtime its Node object reports, then the
written conflist run through libcni.

The installer runs here as the init container runs it, with stand-ins for what only the
image, the pod and the cluster provide: WEFT_PAYLOAD is the image's /opt/weft (the
installed launchers, weftctl, a release name), HOST_ROOT a directory holding the node's
opt/cni/bin (real reference plugins copied in: Debian 12's 1.1, or 1.9.1 from
build/runtimes) and etc/cni/net.d; the Kubernetes API is lab.kube_standin over HTTPS at
$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT (as kubelet sets them in a pod) serving
Node objects, with the ServiceAccount's token and CA in a directory of the test's (handed
to weftctl with --kube-serviceaccount-dir, through weft-install's extra arguments), and
NODE_NAME as the downward API sets it.  The conflist it writes is then run by weft's
cnitool (libcni 1.1.2, the libcni of containerd 1.6 and podman 4) with CNI_PATH and
NETCONFPATH the node's, or, for cniVersion 1.1.0 which that libcni refuses, in libcni's
order by lab.cni.run_chain with GC and STATUS as libcni 1.2+ sends them.
"""

import json
import os
import shutil
import socket
import subprocess

import pytest

from lab import runtimes
from lab.cni import path_without_ip6tables, run_chain
from lab.cnitool import REPO, Driver, ipam_state, veths, weft_conflist
from lab.kube_standin import StandIn, self_signed
from lab.namespaces import suffix

INSTALLER = os.path.join(REPO, "conf", "image", "weft-install")
OLD_PLUGINS = "/usr/lib/cni"
SUBNET = "10.26.0.0/24"
PORTS = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
OLD_VERSIONS = "0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0"
TOKEN = "install-cni-serviceaccount-token"
# the Nodes the stand-in API serves: name -> status.nodeInfo.containerRuntimeVersion
RUNTIMES = {"node-c2": "containerd://2.1.9", "node-c17": "containerd://1.7.13", "node-c16": "containerd://1.6.20~ds1"}


def node_object(name: str, runtime: str) -> dict:
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "uid": f"uid-{name}"},
            "status": {"nodeInfo": {"containerRuntimeVersion": runtime, "kubeletVersion": "v1.34.1",
                                    "operatingSystem": "linux", "architecture": "amd64"}}}


class Cluster:
    """What the init container finds in a pod: the API's address in its environment, the
    ServiceAccount's token and CA in a directory."""

    def __init__(self, tmp_path):
        self.sa = tmp_path / "serviceaccount"
        self.sa.mkdir()
        (self.sa / "token").write_text(TOKEN + "\n")
        recording = {"objects": {f"/api/v1/nodes/{name}": node_object(name, runtime)
                                 for name, runtime in RUNTIMES.items()}}
        self.api = StandIn("127.0.0.1", 0, recording, TOKEN, tls=self_signed(str(self.sa))).start()
        self.port = self.api.port

    def env(self, node_name: str, port: int = None) -> dict:
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port or self.port),
                "NODE_NAME": node_name}

    def args(self) -> list:
        return ["--kube-serviceaccount-dir", str(self.sa)]


@pytest.fixture
def cluster(tmp_path):
    made = Cluster(tmp_path)
    yield made
    made.api.stop()


def closed_port() -> int:
    """A port of 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def payload(installed, tmp_path):
    """A stand-in for the image's /opt/weft."""
    src = tmp_path / "payload"
    for part in ("cni", "bin", "conf"):
        (src / part).mkdir(parents=True)
    for name in ("weft", "weft-ipam"):
        shutil.copy2(installed / "cni" / name, src / "cni" / name)
    shutil.copy2(installed / "bin" / "weftctl", src / "bin" / "weftctl")
    shutil.copy2(os.path.join(REPO, "conf", "10-weft.conflist"), src / "conf")
    (src / "release").write_text(f"test-{suffix()}\n")
    return src


class Node:
    """HOST_ROOT of one node: its bin dir holds copies of `plugins` from `plugin_dir`."""

    def __init__(self, root, plugin_dir, plugins=("portmap",)):
        self.root = root
        self.bin_dir = root / "opt" / "cni" / "bin"
        self.net_d = root / "etc" / "cni" / "net.d"
        self.bin_dir.mkdir(parents=True)
        for name in plugins:
            shutil.copy2(os.path.join(plugin_dir, name), self.bin_dir / name)
        self.conflist = self.net_d / "10-weft.conflist"

    def install(self, payload, source, cni_version=None, kube_env=None, args=()):
        """weft-install with the pod's environment: `kube_env` (the API's address, NODE_NAME)
        and `args` (weft-install's extra arguments) when the node is in a cluster."""
        env = {"PATH": os.environ["PATH"], "WEFT_PAYLOAD": str(payload), "WEFT_CONFLIST": str(source),
               **(kube_env or {})}
        if cni_version is not None:
            env["WEFT_CNI_VERSION"] = cni_version
        return subprocess.run(["sh", INSTALLER, str(self.root), *args], env=env, capture_output=True, text=True,
                              timeout=120)

    def written(self) -> dict:
        return json.loads(self.conflist.read_text())


def chained(work, name, bridge, *extra) -> dict:
    """The standalone weft network of lab.cnitool, then portmap (as conf/10-weft.conflist)."""
    conflist = weft_conflist(work, name, SUBNET, bridge, version="0.4.0")  # the installer replaces it
    conflist["plugins"] += [{"type": "portmap", "capabilities": {"portMappings": True}}, *extra]
    return conflist


def write_source(tmp_path, conflist) -> str:
    path = tmp_path / "configmap-10-weft.conflist"  # the ConfigMap's key, mounted
    path.write_text(json.dumps(conflist))
    return str(path)


def first_install(payload, tmp_path, plugin_dir, cluster, node_name):
    """(node, network name, source conflist, installer run) on a node whose bin dir holds
    portmap from `plugin_dir`, in `cluster` as `node_name`; the installer succeeded."""
    node = Node(tmp_path / "host", plugin_dir)
    name = f"wi{suffix()}"
    source = chained(tmp_path, name, f"cbi{suffix(5)}")
    proc = node.install(payload, write_source(tmp_path, source), kube_env=cluster.env(node_name), args=cluster.args())
    assert proc.returncode == 0, proc.stderr
    return node, name, source, proc


def chosen(proc) -> str:
    """The installer's line saying which cniVersion it chose and why."""
    return next(line for line in proc.stdout.splitlines() if "cniVersion" in line)


def dnat_rules(node) -> list:
    nat = node.run(["iptables-save", "-t", "nat"]).stdout.splitlines()
    return [line for line in nat if "--dport 8080" in line and "--to-destination" in line]


def attach_through_libcni(driver, name, node, pod, net_d, path, version):
    """cnitool add/check/del of `name`: the result says `version`, portmap's DNAT comes and
    goes, and nothing is left."""
    added = driver("add", name, pod, cap_args=PORTS, netconf_dir=str(net_d), path=path)
    assert added.code == 0, str(added)
    assert added.json["cniVersion"] == version
    address = added.json["ips"][0]["address"].split("/")[0]
    assert [r for r in dnat_rules(node) if f"--to-destination {address}:80" in r], dnat_rules(node)
    checked = driver("check", name, pod, cap_args=PORTS, netconf_dir=str(net_d), path=path)
    assert checked.code == 0, str(checked)
    deleted = driver("del", name, pod, cap_args=PORTS, netconf_dir=str(net_d), path=path)
    assert deleted.code == 0, str(deleted)
    assert veths(node) == [] and dnat_rules(node) == []
    assert ipam_state(driver.work, name) == ([], [])


def test_plugins_1_1_keep_the_conflist_at_1_0_0_which_libcni_1_1_runs(payload, cnitool, netns, tmp_path, cluster):
    node_ns, pod = netns("wicnode"), netns("wicpod")
    node, name, source, proc = first_install(payload, tmp_path, OLD_PLUGINS, cluster, "node-c16")
    assert (f"weftctl install-conflist: cniVersion 1.0.0 for {node.conflist}: not 1.1.0, held back by: "
            f"portmap ({node.bin_dir}/portmap) supports {OLD_VERSIONS}; and the runtime containerd://1.6.20~ds1 "
            f"(node node-c16's containerRuntimeVersion) is older than containerd 2.0.0: its libcni (before 1.2) "
            f"refuses 1.1.0 results\n") in proc.stdout
    assert f"wrote {node.conflist}" in proc.stdout
    assert node.written() == {**source, "cniVersion": "1.0.0"}
    assert node.conflist.stat().st_mode & 0o777 == 0o644

    driver = Driver(cnitool, node_ns, tmp_path, str(node.bin_dir))  # CNI_PATH: the node's bin dir only
    attach_through_libcni(driver, name, node_ns, pod, node.net_d, path_without_ip6tables(tmp_path), "1.0.0")

    again = node.install(payload, write_source(tmp_path, source), kube_env=cluster.env("node-c16"),
                         args=cluster.args())
    assert again.returncode == 0 and "wrote" not in again.stdout and f"{node.conflist} unchanged" in again.stdout


def test_plugins_1_9_raise_the_conflist_to_1_1_0_on_containerd_2_only(payload, cnitool, netns, tmp_path, cluster):
    node_ns, pod = netns("wicnode"), netns("wicpod")
    node, name, source, proc = first_install(payload, tmp_path, runtimes.cni_plugins_19(), cluster, "node-c2")
    assert chosen(proc) == (f"weftctl install-conflist: cniVersion 1.1.0 for {node.conflist}: every plugin of the "
                            f"chain supports 1.1.0: weft, weft-ipam, portmap; and the runtime containerd://2.1.9 "
                            f"(node node-c2's containerRuntimeVersion) takes 1.1.0 (containerd 2.0.0 and later "
                            f"carry libcni 1.2 or later)")
    assert "note:" not in proc.stdout
    # the installer asked the API for its own Node, over TLS, as its ServiceAccount
    assert [(seen["path"], seen["query"]) for seen in cluster.api.seen] == [("/api/v1/nodes/node-c2", {})]
    conflist = node.written()
    assert conflist == {**source, "cniVersion": "1.1.0"}

    # the chain at 1.1.0 as libcni 1.2+ runs it (containerd 2.x): every plugin from the node's
    # bin dir accepts it, and GC and STATUS reach weft
    path = path_without_ip6tables(tmp_path)
    call = dict(container_id=f"cid{suffix()}", netns=pod.path, ifname="eth0", node=node_ns,
                extra_env={"PATH": path})
    plugins = conflist["plugins"]
    bin_dir = str(node.bin_dir)
    withports = {**conflist, "plugins": [plugins[0], {**plugins[1], "runtimeConfig": PORTS}]}
    out, result = run_chain(withports["plugins"], "ADD", withports, bin_dir, **call)
    assert out.code == 0, str(out)
    assert result["cniVersion"] == "1.1.0" and len(dnat_rules(node_ns)) == 1
    for command in ("STATUS", "GC"):
        out, _ = run_chain(plugins, command, conflist, bin_dir, **call,
                           valid_attachments=[{"containerID": call["container_id"], "ifname": "eth0"}])
        assert out.code == 0, f"{command}: {out}"
    assert ipam_state(tmp_path, name)[0] == [result["ips"][0]["address"].split("/")[0]]
    weft_log = [json.loads(line) for line in (tmp_path / "weft.log").read_text().splitlines()]
    assert [entry["command"] for entry in weft_log if entry["command"] in ("GC", "STATUS")] == ["STATUS", "GC"]
    out, _ = run_chain(withports["plugins"], "DEL", withports, bin_dir, prev_result=result, **call)
    assert out.code == 0, str(out)
    assert veths(node_ns) == [] and dnat_rules(node_ns) == [] and ipam_state(tmp_path, name) == ([], [])

    # libcni 1.1 (containerd 1.6 and 1.7) refuses what 1.1.0 plugins return, which is why
    # the plugins alone are not enough: the same bin dir on a node whose Node reports
    # containerd 1.7 gets 1.0.0, naming the runtime, and that conflist runs
    driver = Driver(cnitool, node_ns, tmp_path, bin_dir)
    refused = driver("add", name, pod, cap_args=PORTS, netconf_dir=str(node.net_d), path=path)
    assert refused.code != 0 and 'unsupported CNI result version "1.1.0"' in refused.stderr, str(refused)
    cleanup = driver("del", name, pod, cap_args=PORTS, netconf_dir=str(node.net_d), path=path)
    assert cleanup.code == 0, str(cleanup)
    on_17 = node.install(payload, write_source(tmp_path, source), kube_env=cluster.env("node-c17"),
                         args=cluster.args())
    assert on_17.returncode == 0, on_17.stderr
    assert chosen(on_17) == (f"weftctl install-conflist: cniVersion 1.0.0 for {node.conflist}: not 1.1.0: the "
                             f"runtime containerd://1.7.13 (node node-c17's containerRuntimeVersion) is older than "
                             f"containerd 2.0.0: its libcni (before 1.2) refuses 1.1.0 results; every plugin of the "
                             f"chain supports 1.1.0: weft, weft-ipam, portmap")
    assert "note:" not in on_17.stdout and f"wrote {node.conflist}" in on_17.stdout
    assert node.written() == {**source, "cniVersion": "1.0.0"}
    attach_through_libcni(driver, name, node_ns, pod, node.net_d, path, "1.0.0")


def test_an_api_that_cannot_be_read_keeps_the_conflist_at_1_0_0_and_says_so(payload, tmp_path, cluster):
    """Plugins 1.9.1 everywhere: nothing but the runtime can hold the chain back."""
    source = write_source(tmp_path, chained(tmp_path, "wiapi", "cbiapi"))
    node = Node(tmp_path / "host", runtimes.cni_plugins_19())
    port = closed_port()
    proc = node.install(payload, source, kube_env=cluster.env("node-c2", port), args=cluster.args())
    assert proc.returncode == 0, proc.stderr
    assert chosen(proc) == (f"weftctl install-conflist: cniVersion 1.0.0 for {node.conflist}: not 1.1.0: the runtime "
                            f"could not be confirmed: reading node node-c2: Kubernetes API https://127.0.0.1:{port} "
                            f"unreachable: [Errno 111] Connection refused; every plugin of the chain supports 1.1.0: "
                            f"weft, weft-ipam, portmap")
    assert ("weftctl install-conflist: note: on a runtime that takes 1.1.0 (containerd 2.0 or later, CRI-O 1.31 or "
            "later) state it with $WEFT_CONTAINER_RUNTIME or --runtime NAME://VERSION, or force the version with "
            "WEFT_CNI_VERSION=1.1.0\n") in proc.stdout
    assert node.written()["cniVersion"] == "1.0.0"

    # a Node the API does not know, and a ServiceAccount it refuses, the same
    proc = node.install(payload, source, kube_env=cluster.env("node-gone"), args=cluster.args())
    assert ("the runtime could not be confirmed: reading node node-gone: Kubernetes API "
            f"https://127.0.0.1:{cluster.port}/api/v1/nodes/node-gone: HTTP 404") in chosen(proc)
    (cluster.sa / "token").write_text("a-token-without-rbac\n")
    proc = node.install(payload, source, kube_env=cluster.env("node-c2"), args=cluster.args())
    assert "HTTP 403 (RBAC: the install-cni container's ServiceAccount needs get on nodes" in chosen(proc)
    assert node.written()["cniVersion"] == "1.0.0"

    # without a cluster, the runtime stated by hand (weft-install passes its flags on)
    proc = node.install(payload, source, args=["--runtime", "containerd://2.1.9"])
    assert proc.returncode == 0, proc.stderr
    assert "and the runtime containerd://2.1.9 (stated by --runtime) takes 1.1.0" in chosen(proc)
    assert node.written()["cniVersion"] == "1.1.0"


def test_a_missing_or_broken_plugin_keeps_the_conflist_at_1_0_0_and_is_named(payload, tmp_path):
    node = Node(tmp_path / "host", runtimes.cni_plugins_19(), plugins=("portmap",))
    (node.bin_dir / "tuning").write_text("#!/bin/sh\necho 'tuning 1.9.1 says hello'\n")
    (node.bin_dir / "tuning").chmod(0o755)
    source = chained(tmp_path, "wibroken", "cbibroken", {"type": "bandwidth"}, {"type": "tuning"})
    proc = node.install(payload, write_source(tmp_path, source))
    assert proc.returncode == 0, proc.stderr
    line = next(text for text in proc.stdout.splitlines() if "cniVersion" in text)
    assert line.startswith(f"weftctl install-conflist: cniVersion 1.0.0 for {node.conflist}: not 1.1.0, "
                           f"held back by: bandwidth ({node.bin_dir}) is not an executable file in "
                           f"{node.bin_dir}; tuning ({node.bin_dir}/tuning) answered VERSION with "
                           f"something that is not JSON: 'tuning 1.9.1 says hello'"), line
    assert "portmap" not in line and node.written()["cniVersion"] == "1.0.0"


def test_an_unknown_forced_version_is_refused_and_nothing_is_written(payload, tmp_path):
    node = Node(tmp_path / "host", runtimes.cni_plugins_19())
    proc = node.install(payload, write_source(tmp_path, chained(tmp_path, "wiforced", "cbiforced")),
                        cni_version="1.2.0")
    assert proc.returncode == 2, proc
    assert ("weftctl install-conflist: WEFT_CNI_VERSION '1.2.0' is not a CNI version weft knows "
            "(0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0; or 'auto')") in proc.stderr
    assert not node.conflist.exists()
