"""The DaemonSet's installer (conf/image/weft-install) choosing the conflist's cniVersion
from the plugins in the node's bin dir, then the written conflist run through libcni.

The installer runs here as the init container runs it, with stand-ins for what only the
image and the pod provide: WEFT_PAYLOAD is the image's /opt/weft (the installed
launchers, weftctl, a release name), HOST_ROOT a directory holding the node's
opt/cni/bin (real reference plugins copied in: Debian 12's 1.1, or 1.9.1 from
build/runtimes) and etc/cni/net.d.  The conflist it writes is then run by weft's
cnitool (libcni 1.1.2, the libcni of containerd 1.6 and podman 4) with CNI_PATH and
NETCONFPATH the node's, or, for cniVersion 1.1.0 which that libcni refuses, in libcni's
order by lab.cni.run_chain with GC and STATUS as libcni 1.2+ sends them.
"""

import json
import os
import shutil
import subprocess

import pytest

from lab import runtimes
from lab.cni import path_without_ip6tables, run_chain
from lab.cnitool import REPO, Driver, ipam_state, veths, weft_conflist
from lab.namespaces import suffix

INSTALLER = os.path.join(REPO, "conf", "image", "weft-install")
OLD_PLUGINS = "/usr/lib/cni"
SUBNET = "10.26.0.0/24"
PORTS = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
OLD_VERSIONS = "0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0"


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

    def install(self, payload, source, cni_version=None):
        env = {"PATH": os.environ["PATH"], "WEFT_PAYLOAD": str(payload), "WEFT_CONFLIST": str(source)}
        if cni_version is not None:
            env["WEFT_CNI_VERSION"] = cni_version
        return subprocess.run(["sh", INSTALLER, str(self.root)], env=env, capture_output=True, text=True,
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


def first_install(payload, tmp_path, plugin_dir):
    """(node, network name, source conflist, installer run) on a node whose bin dir holds
    portmap from `plugin_dir`; the installer succeeded."""
    node = Node(tmp_path / "host", plugin_dir)
    name = f"wi{suffix()}"
    source = chained(tmp_path, name, f"cbi{suffix(5)}")
    proc = node.install(payload, write_source(tmp_path, source))
    assert proc.returncode == 0, proc.stderr
    return node, name, source, proc


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


def test_plugins_1_1_keep_the_conflist_at_1_0_0_which_libcni_1_1_runs(payload, cnitool, netns, tmp_path):
    node_ns, pod = netns("wicnode"), netns("wicpod")
    node, name, source, proc = first_install(payload, tmp_path, OLD_PLUGINS)
    assert (f"weftctl install-conflist: cniVersion 1.0.0 for {node.conflist}: not 1.1.0, held back by: "
            f"portmap ({node.bin_dir}/portmap) supports {OLD_VERSIONS}\n") in proc.stdout
    assert f"wrote {node.conflist}" in proc.stdout
    assert node.written() == {**source, "cniVersion": "1.0.0"}
    assert node.conflist.stat().st_mode & 0o777 == 0o644

    driver = Driver(cnitool, node_ns, tmp_path, str(node.bin_dir))  # CNI_PATH: the node's bin dir only
    attach_through_libcni(driver, name, node_ns, pod, node.net_d, path_without_ip6tables(tmp_path), "1.0.0")

    again = node.install(payload, write_source(tmp_path, source))
    assert again.returncode == 0 and "wrote" not in again.stdout and f"{node.conflist} unchanged" in again.stdout


def test_plugins_1_9_raise_the_conflist_to_1_1_0_with_gc_and_status(payload, cnitool, netns, tmp_path):
    node_ns, pod = netns("wicnode"), netns("wicpod")
    node, name, source, proc = first_install(payload, tmp_path, runtimes.cni_plugins_19())
    assert (f"cniVersion 1.1.0 for {node.conflist}: every plugin of the chain supports 1.1.0: "
            f"weft, weft-ipam, portmap\n") in proc.stdout
    assert "containerd 1.6 and 1.7" in proc.stdout and "WEFT_CNI_VERSION=1.0.0" in proc.stdout
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

    # libcni 1.1 (containerd 1.6 and 1.7) refuses what 1.1.0 plugins return: why the
    # installer's note says so, and what the override is for
    driver = Driver(cnitool, node_ns, tmp_path, bin_dir)
    refused = driver("add", name, pod, cap_args=PORTS, netconf_dir=str(node.net_d), path=path)
    assert refused.code != 0 and 'unsupported CNI result version "1.1.0"' in refused.stderr, str(refused)
    cleanup = driver("del", name, pod, cap_args=PORTS, netconf_dir=str(node.net_d), path=path)
    assert cleanup.code == 0, str(cleanup)
    forced = node.install(payload, write_source(tmp_path, source), cni_version="1.0.0")
    assert forced.returncode == 0, forced.stderr
    assert f"cniVersion 1.0.0 for {node.conflist}: forced by WEFT_CNI_VERSION\n" in forced.stdout
    assert node.written()["cniVersion"] == "1.0.0"
    attach_through_libcni(driver, name, node_ns, pod, node.net_d, path, "1.0.0")


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
