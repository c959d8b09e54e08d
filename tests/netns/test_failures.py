"""Bad input and injected failures through the real executables: error JSON on
stdout, a non-zero exit, and nothing left behind (no IP, no link, no table)."""

import os

import pytest

from cni_plugin.datapath.naming import host_veth_name
from cni_plugin.guard import ports


def assert_nothing_left(weft, node, cid="c1"):
    assert weft.ipam_files() == []
    links = {entry["ifname"] for entry in node.ip_json("link", "show")}
    assert host_veth_name(cid, "eth0") not in links


@pytest.mark.parametrize("subnet,needle", [
    ("10.1.0.0/33", "10.1.0.0/33"),     # invalid CIDR
    ("10.1.0.5/24", "10.1.0.5/24"),     # host bits set
    ("10.1.0.0/31", "10.1.0.0/31"),     # no room for hosts
    ("10.1.0.0/32", "10.1.0.0/32"),
])
def test_bad_subnet_is_code_7(weft, node, pods, subnet, needle):
    conf = weft.conf(ipam={"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
                           "ranges": [[{"subnet": subnet}]]})
    out = weft("ADD", conf, pods())
    assert out.code == 1 and out.json["code"] == 7 and needle in out.json["msg"], out
    assert_nothing_left(weft, node)


def test_overlapping_ranges_are_code_7(weft, node, pods):
    conf = weft.conf(ipam={"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
                           "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}]]})
    out = weft("ADD", conf, pods())
    assert out.json["code"] == 7 and "overlap" in out.json["msg"], out
    assert_nothing_left(weft, node)


def test_netns_that_is_not_a_namespace(weft, node, tmp_path):
    fake = tmp_path / "not-a-netns"
    fake.write_text("")

    class Fake:
        path = str(fake)

    out = weft("ADD", weft.conf(), Fake())
    assert out.json["code"] == 8 and "is not a namespace" in out.json["msg"], out
    assert_nothing_left(weft, node)


def test_missing_netns_path(weft, node):
    class Gone:
        path = "/run/netns/weft-does-not-exist"

    out = weft("ADD", weft.conf(), Gone())
    assert out.json["code"] == 8 and "/run/netns/weft-does-not-exist" in out.json["msg"], out
    assert_nothing_left(weft, node)


def test_plugins_own_netns_is_code_8(weft, node):
    out = weft("ADD", weft.conf(), node)  # the plugin runs inside `node`
    assert out.json["code"] == 8 and "own network namespace" in out.json["msg"], out
    assert_nothing_left(weft, node)


def test_unknown_ipam_type_names_the_path(weft, node, pods):
    out = weft("ADD", weft.conf(ipam={"type": "no-such-ipam", "ranges": [[{"subnet": "10.1.0.0/24"}]]}), pods())
    assert out.json["code"] == 7 and "no-such-ipam" in out.json["msg"] and "CNI_PATH" in out.json["msg"]
    assert_nothing_left(weft, node)


def test_failure_after_ipam_add_rolls_back_interface_clash(weft, node, pods):
    """The container already has an eth0: veth creation fails after IPAM ADD."""
    pod = pods()
    pod.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"])
    out = weft("ADD", weft.conf(), pod)
    assert out.code == 1 and out.json["code"] == 103, out
    assert_nothing_left(weft, node)
    assert {e["ifname"] for e in pod.ip_json("link", "show")} == {"lo", "eth0", "eth0peer"}


def test_failure_after_ipam_add_rolls_back_bridge_clash(weft, node, pods):
    """A non-bridge link holds the bridge's name: refused after IPAM ADD, undone."""
    node.run(["ip", "link", "add", "cbr0", "type", "veth", "peer", "name", "cbr0peer"])
    out = weft("ADD", weft.conf(), pods())
    assert out.json["code"] == 103 and "not a bridge" in out.json["msg"], out
    assert_nothing_left(weft, node)


def test_failure_in_container_routes_rolls_back(weft, node, pods):
    """An IPAM route whose gateway is unreachable fails inside the container."""
    conf = weft.conf(ipMasq=True, ipam={"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
                                        "ranges": [[{"subnet": "10.244.1.0/24"}]],
                                        "routes": [{"dst": "10.50.0.0/16", "gw": "192.0.2.1"}]})
    pod = pods()
    out = weft("ADD", conf, pod)
    assert out.code == 1 and out.json["code"] == 5, out
    assert "10.50.0.0/16" in out.json["msg"] and "192.0.2.1" in out.json["msg"], out
    assert_nothing_left(weft, node)
    assert {e["ifname"] for e in pod.ip_json("link", "show")} == {"lo"}
    assert node.run(["nft", "list", "table", "inet", "weft_weftnet"], check=False).returncode != 0


def test_nft_failure_is_code_5_and_rolls_back(weft, node, pods):
    """A real refusal, no stand-in: a 252-character network name makes the nftables
    tables' names (weft_source_ + name, weft_ + name) longer than nftables' 256-character
    limit.  Everything before the first nftables step (source validation) worked; the
    error names the table, and is undone."""
    name = "n" * 252
    subnet_file = f"{weft.tmp}/run/weft.env"  # the port records live beside it
    conf = weft.conf(ipMasq=True, name=name, subnetFile=subnet_file)
    out = weft("ADD", conf, pods())
    assert out.code == 1 and out.json["code"] == 5, out
    assert "nftables refused" in out.json["msg"] and f"weft_source_{name}" in out.json["msg"], out
    assert "name too long" in out.json["msg"], out
    assert weft.ipam_files(name) == []
    # the port record written before the refusal is gone too, and the pod index with it
    assert ports.read_all(ports.directory_beside(subnet_file, name)) == ({}, [])
    index = ports.pod_index(f"{weft.tmp}/run", "c1")
    assert not os.path.isdir(index) or os.listdir(index) == []
    links = {entry["ifname"] for entry in node.ip_json("link", "show")}
    assert host_veth_name("c1", "eth0") not in links
    assert node.run(["nft", "list", "tables"]).stdout.strip() == ""


def test_ipam_delegate_crash_is_code_105_with_its_stderr(weft, node, pods):
    """Stand-in IPAM plugin that dies without CNI error JSON."""
    stub = weft.stub("crashing-ipam", 'echo "segfault in crashing-ipam" >&2\nexit 139\n')
    conf = weft.conf(ipam={"type": "crashing-ipam", "ranges": [[{"subnet": "10.244.1.0/24"}]]})
    out = weft("ADD", conf, pods(), cni_path=f"{stub}:{weft.cni_path}")
    assert out.code == 1 and out.json["code"] == 105, out
    assert f"{stub}/crashing-ipam" in out.json["msg"] and "exit code 139" in out.json["msg"], out
    assert "segfault in crashing-ipam" in out.json["details"], out
    assert_nothing_left(weft, node)


def test_failed_call_writes_its_error_json_to_the_log(weft, node, pods):
    conf = weft.conf(ipam={"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
                           "ranges": [[{"subnet": "10.1.0.0/33"}]]})
    out = weft("ADD", conf, pods(), cid="logged")
    assert out.json["code"] == 7, out
    (line,) = [entry for entry in weft.log_lines() if entry["containerID"] == "logged"]
    assert line["command"] == "ADD" and line["ifname"] == "eth0" and line["exit"] == 1, line
    assert line["via"] == "standalone" and line["ms"] >= 0, line
    assert line["error"] == out.json, line


@pytest.mark.parametrize("log_file", ["file/weft.log", "adir"])
def test_a_log_write_that_fails_never_fails_the_call(weft, node, pods, log_file):
    (weft.tmp / "file").write_text("a regular file where a directory should be\n")
    (weft.tmp / "adir").mkdir()
    conf = weft.conf(logFile=f"{weft.tmp}/{log_file}")  # ENOTDIR / EISDIR on open
    pod = pods()
    added = weft("ADD", conf, pod)
    assert added.code == 0, added
    assert added.json["ips"][0]["address"] == "10.244.1.2/24"
    assert weft("DEL", conf, pod).code == 0
    failed = weft("ADD", {**conf, "cniVersion": "0.2.0"}, pod)
    assert failed.code == 1 and failed.json["code"] == 1, failed   # the call's own error, not the log's
    assert (weft.tmp / "file").read_text().startswith("a regular file") and not os.listdir(weft.tmp / "adir")


def test_status_is_50_when_the_ipam_store_is_unusable(weft, node):
    blocker = weft.tmp / "not-a-dir"
    blocker.write_text("")
    conf = weft.conf("1.1.0", ipam={"type": "weft-ipam", "dataDir": f"{blocker}/ipam",
                                    "ranges": [[{"subnet": "10.244.1.0/24"}]]})
    out = weft("STATUS", conf)
    assert out.code == 1 and out.json["code"] == 50, out
    assert f"{blocker}/ipam/weftnet" in out.json["msg"] and str(blocker) in out.json["msg"], out
    assert weft("STATUS", weft.conf("1.1.0")).code == 0


def test_gc_reports_every_error_it_met(weft, node, pods):
    """Stand-in: an IPAM plugin whose GC fails; GC still deletes the stale veth, leaves
    the node-wide masquerade table alone and names the failure."""
    conf = weft.conf("1.1.0", ipMasq=True)
    assert weft("ADD", conf, pods(), cid="stale").code == 0
    ipam = weft.stub("gc-failing-ipam", 'cat >/dev/null\n'
                                        'echo \'{"cniVersion": "1.1.0", "code": 11, "msg": "store busy"}\'\n'
                                        'exit 1\n')
    gc_conf = {**conf, "ipam": {"type": "gc-failing-ipam"}, "cni.dev/valid-attachments": []}
    out = weft("GC", gc_conf, cni_path=f"{ipam}:{weft.cni_path}")
    assert out.code == 1 and out.json["code"] == 11, out
    assert "store busy" in out.json["msg"], out
    assert host_veth_name("stale", "eth0") not in {e["ifname"] for e in node.ip_json("link", "show")}
    assert "10.244.1.0/24" in node.run(["nft", "list", "table", "inet", "weft_weftnet"]).stdout
