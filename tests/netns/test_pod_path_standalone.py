"""The per-pod path against hostile input, locks, full and read-only disks (issue 13,
items 4-6), standalone executables in real namespaces."""

import json
import os
import subprocess
import time
from contextlib import contextmanager

import pytest

from lab import attachment
from lab.attachment import holding, host_veth
from lab.namespaces import sh

HOSTILE_IFNAME = 'a",1.2.3.4}#'  # 12 characters a kernel accepts; it once reached nft text


def node_links(node) -> set:
    return {link["ifname"] for link in node.ip_json("link", "show")}


def pod_links(pod) -> set:
    return {link["ifname"] for link in pod.ip_json("link", "show")}


def index_names(weft, network="weftnet") -> list:
    directory = f"{weft.tmp}/ipam/{network}/by-attachment"
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def lock_file(weft, cid: str, ifname: str = "eth0") -> str:
    return attachment.lock_file(f"{weft.tmp}/weft-data", cid, ifname)


@contextmanager
def tmpfs(path, size: str):
    """A small tmpfs at path (a mount, no network state); unmounted even on failure."""
    os.makedirs(path, exist_ok=True)
    sh(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)])
    try:
        yield str(path)
    finally:
        sh(["umount", "-l", str(path)], check=False)


def fill(directory: str) -> list:
    """Write 4 KiB files into directory until the disk is full; returns their paths."""
    made, block = [], b"x" * 4096
    for i in range(100000):
        path = os.path.join(directory, f"filler{i}")
        try:
            with open(path, "wb") as handle:
                handle.write(block)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            if os.path.exists(path) and os.path.getsize(path) == 0:
                os.unlink(path)
            return made
        made.append(path)
    raise AssertionError(f"{directory} never filled up")


# --- item 4: strings from the runtime ---------------------------------------------------

def test_hostile_ifname_is_passed_as_data(weft, node, pods):
    pod = pods()
    conf = weft.conf()
    out = weft("ADD", conf, pod, cid="hostile1", ifname=HOSTILE_IFNAME)
    assert out.code == 0, out
    assert HOSTILE_IFNAME in pod_links(pod)
    assert out.json["interfaces"][-1]["name"] == HOSTILE_IFNAME
    assert host_veth("hostile1", HOSTILE_IFNAME) in node_links(node)
    assert index_names(weft) == [f"hostile1:{HOSTILE_IFNAME}"]
    ip = out.json["ips"][0]["address"].split("/")[0]
    with open(f"{weft.tmp}/ipam/weftnet/{ip}", newline="") as handle:
        assert handle.read() == f"hostile1\r\n{HOSTILE_IFNAME}"
    assert weft("DEL", conf, pod, cid="hostile1", ifname=HOSTILE_IFNAME).code == 0
    assert HOSTILE_IFNAME not in pod_links(pod) and weft.ipam_files() == [] and index_names(weft) == []


@pytest.mark.parametrize("cid, ifname, needle", [
    ("abc\n", "eth0", "CNI_CONTAINERID"),           # "$" of a regex admits a trailing newline
    ("../../etc", "eth0", "CNI_CONTAINERID"),
    ("a" * 201, "eth0", "limit is 200"),
    ("ok1", "eth\x01", "control characters"),
    ("ok1", "a/b", "CNI_IFNAME"),
    ("ok1", "é" * 8, "16 bytes long"),              # 8 characters, 16 bytes: over IFNAMSIZ
])
def test_bad_container_id_or_ifname_is_code_4_and_leaves_nothing(weft, node, pods, cid, ifname, needle):
    pod = pods()
    before = node_links(node)
    out = weft("ADD", weft.conf(), pod, cid=cid, ifname=ifname)
    assert out.code == 1 and out.json["code"] == 4 and needle in out.json["msg"], out
    assert node_links(node) == before and weft.ipam_files() == []
    assert not os.path.exists(f"{weft.tmp}/weft-data/locks") or not os.listdir(f"{weft.tmp}/weft-data/locks")


# --- item 5: the namespace, the lock ---------------------------------------------------

def test_fifo_as_netns_returns_promptly_with_code_8(weft, node, pods):
    fifo = weft.tmp / "fifo"
    os.mkfifo(fifo)

    class Fifo:
        path = str(fifo)

    for command in ("ADD", "CHECK"):
        conf = weft.conf(prevResult={"cniVersion": "1.0.0", "interfaces": [
            {"name": "eth0", "sandbox": str(fifo)}], "ips": []}) if command == "CHECK" else weft.conf()
        try:
            out = weft(command, conf, Fifo(), cid="fifo1")  # lab.cni bounds the call at 60 s
        except subprocess.TimeoutExpired:
            pytest.fail(f"{command} with a FIFO as CNI_NETNS hung")
        assert out.code == 1 and out.json["code"] == 8 and str(fifo) in out.json["msg"], out
        assert "not a namespace" in out.json["msg"], out
    assert weft("DEL", weft.conf(), Fifo(), cid="fifo1").code == 0
    assert weft.ipam_files() == [] and not any(n.startswith("wft") for n in node_links(node))


def test_lock_wait_is_bounded_and_ends_in_code_11(weft, node, pods):
    pod = pods()
    conf = weft.conf(lockTimeout=1)
    with holding(lock_file(weft, "locked1")):
        for command, c in (("ADD", conf), ("DEL", conf)):
            out = weft(command, c, pod, cid="locked1")
            assert out.code == 1 and out.json["code"] == 11, out
            assert lock_file(weft, "locked1") in out.json["msg"] and "retry" in out.json["msg"], out
        assert weft.ipam_files() == [] and "eth0" not in pod_links(pod)
    out = weft("ADD", conf, pod, cid="locked1")  # the retry gets the real answer
    assert out.code == 0, out
    assert "eth0" in pod_links(pod) and len(weft.ipam_files()) == 1
    with open(lock_file(weft, "locked1")) as handle:
        assert handle.read() == "added\n"
    assert weft("DEL", conf, pod, cid="locked1").code == 0
    assert not os.path.exists(lock_file(weft, "locked1")) and weft.ipam_files() == []


def test_racing_adds_of_one_attachment_one_wins_state_consistent(weft, node, pods):
    pod = pods()
    conf = weft.conf()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update(CNI_COMMAND="ADD", CNI_CONTAINERID="race1", CNI_NETNS=pod.path, CNI_IFNAME="eth0",
               CNI_PATH=weft.cni_path)
    procs = [subprocess.Popen(["ip", "netns", "exec", node.name, weft.exe], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env=env) for _ in range(6)]
    outs = [p.communicate(json.dumps(conf).encode(), timeout=60) for p in procs]
    codes = [p.returncode for p in procs]
    assert codes.count(0) == 1, outs
    (winner,) = [json.loads(o[0]) for o, p in zip(outs, procs) if p.returncode == 0]
    losers = [json.loads(o[0])["code"] for o, p in zip(outs, procs) if p.returncode != 0]
    assert set(losers) == {102}, outs
    ip = winner["ips"][0]["address"]
    assert weft.ipam_files() == [ip.split("/")[0]] and index_names(weft) == ["race1:eth0"]
    addrs = [a["local"] + "/" + str(a["prefixlen"]) for link in pod.ip_json("addr", "show", "eth0")
             for a in link["addr_info"] if a["family"] == "inet"]
    assert addrs == [ip]
    assert host_veth("race1") in node_links(node)
    assert weft("DEL", conf, pod, cid="race1").code == 0


def test_add_after_a_killed_add_cleans_its_debris_but_a_live_attachment_is_102(weft, node, pods):
    pod = pods()
    conf = weft.conf()
    assert weft("ADD", conf, pod, cid="debris1").code == 0
    assert weft("ADD", conf, pod, cid="debris1").json["code"] == 102  # live: left alone
    assert "eth0" in pod_links(pod)
    # what a weftd killed between the veth and the commit leaves: the stage says "adding"
    with open(lock_file(weft, "debris1"), "w") as handle:
        handle.write("adding\n")
    out = weft("ADD", conf, pod, cid="debris1")
    assert out.code == 0, out
    assert "eth0" in pod_links(pod) and len(weft.ipam_files()) == 1
    assert weft("DEL", conf, pod, cid="debris1").code == 0
    assert weft.ipam_files() == [] and host_veth("debris1") not in node_links(node)


def test_killed_atomic_write_debris_is_removed_by_the_next_add(weft, node, pods):
    pod = pods()
    conf = weft.conf()
    assert weft("ADD", conf, pod, cid="tmp1").code == 0
    debris = f"{weft.tmp}/ipam/weftnet/by-attachment/.tmp2:eth0.4242.4242.tmp"
    with open(debris, "w") as handle:
        handle.write("10.244.1.9\n")
    assert weft("ADD", conf, pods(), cid="tmp2").code == 0
    assert not os.path.exists(debris)
    assert index_names(weft) == ["tmp1:eth0", "tmp2:eth0"]


# --- item 6: disks, small ones -----------------------------------------------------------

def test_add_on_a_full_ipam_disk_rolls_back_everything(weft, node, pods):
    pod = pods()
    with tmpfs(weft.tmp / "ipam", "256k"):
        conf = weft.conf()
        assert weft("ADD", conf, pod, cid="warm").code == 0  # the store, its history
        assert weft("DEL", conf, pod, cid="warm").code == 0
        fillers = fill(f"{weft.tmp}/ipam")
        os.unlink(fillers.pop())  # one page left: the index fits, the address file does not
        before = node_links(node)
        out = weft("ADD", conf, pod, cid="full1")
        assert out.code == 1 and out.json["code"] == 5, out
        assert "No space left on device" in out.json["msg"] and f"{weft.tmp}/ipam" in out.json["msg"], out
        assert weft.ipam_files() == [] and index_names(weft) == []
        assert node_links(node) == before and "eth0" not in pod_links(pod)
        assert not os.path.exists(lock_file(weft, "full1"))  # a failed ADD leaves no lock file
        with open(f"{weft.tmp}/ipam/weftnet/history.jsonl") as handle:
            assert "full1" not in handle.read()  # an allocation that never took effect
        for path in fillers:
            os.unlink(path)
        out = weft("ADD", conf, pod, cid="full1")
        assert out.code == 0, out
        assert weft("DEL", conf, pod, cid="full1").code == 0


def test_del_on_a_read_only_ipam_disk_frees_the_kernel_side_and_reports_5(weft, node, pods):
    pod = pods()
    with tmpfs(weft.tmp / "ipam", "1m"):
        conf = weft.conf()
        added = weft("ADD", conf, pod, cid="ro1")
        assert added.code == 0, added
        sh(["mount", "-o", "remount,ro", str(weft.tmp / "ipam")])
        out = weft("DEL", conf, pod, cid="ro1")
        assert out.code == 1 and out.json["code"] == 5, out
        assert "Read-only file system" in out.json["msg"] and "retried" in out.json["msg"], out
        assert "eth0" not in pod_links(pod) and host_veth("ro1") not in node_links(node)
        sh(["mount", "-o", "remount,rw", str(weft.tmp / "ipam")])
        assert weft("DEL", conf, pod, cid="ro1").code == 0  # the runtime's retry finishes it
        assert weft.ipam_files() == []


@pytest.mark.parametrize("overrides, needle", [
    ({"dataDir": "relative/dir"}, "dataDir 'relative/dir' must be an absolute path"),
    ({"logFile": "weft.log"}, "logFile 'weft.log' must be an absolute path"),
    ({"type": None}, "type is missing"),
    ({"runtimeConfig": {"mac": 42}}, "runtimeConfig.mac must be a string"),
    ({"args": {"cni": {"mac": ["x"]}}}, "args.cni.mac must be a string"),
    ({"lockTimeout": "soon"}, "lockTimeout"),
])
def test_bad_netconf_is_code_7_naming_the_key(weft, node, pods, overrides, needle):
    conf = weft.conf(**overrides)
    conf = {k: v for k, v in conf.items() if v is not None}
    pod = pods()
    cwd_before = set(os.listdir(os.getcwd()))
    out = weft("ADD", conf, pod, cid="conf1")
    assert out.code == 1 and out.json["code"] == 7 and needle in out.json["msg"], out
    assert weft.ipam_files() == [] and "eth0" not in pod_links(pod)
    assert set(os.listdir(os.getcwd())) == cwd_before


def test_deeply_nested_json_is_code_6(weft, node):
    conf = b'{"cniVersion": "1.0.0", "name": "n", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    out = weft("ADD", conf, None, cid="deep1")
    assert out.code == 1 and out.json["code"] == 6 and "nested too deeply" in out.json["msg"], out


def test_gc_removes_orphan_weft_veths_that_never_reached_the_bridge(weft, node, pods):
    pod, other = pods(), pods()
    conf = weft.conf("1.1.0")
    assert weft("ADD", conf, pod, cid="live1").code == 0
    orphan, keep, foreign = host_veth("gone1"), host_veth("live2"), "notweft0"
    node.run(["ip", "link", "add", orphan, "type", "veth", "peer", "name", "o1", "netns", other.name])
    node.run(["ip", "link", "add", keep, "type", "veth", "peer", "name", "o2", "netns", other.name])
    node.run(["ip", "link", "add", foreign, "type", "veth", "peer", "name", "o3", "netns", other.name])
    valid = [{"containerID": "live1", "ifname": "eth0"}, {"containerID": "live2", "ifname": "eth0"}]
    out = weft("GC", {**conf, "cni.dev/valid-attachments": valid})
    assert out.code == 0, out
    links = node_links(node)
    assert orphan not in links and "o1" not in pod_links(other)
    assert keep in links and foreign in links and host_veth("live1") in links
    assert "eth0" in pod_links(pod)


def test_gc_leaves_an_attachment_alone_while_a_call_holds_its_lock(weft, node, pods):
    other = pods()
    conf = weft.conf("1.1.0")
    busy = host_veth("busy1")
    node.run(["ip", "link", "add", busy, "type", "veth", "peer", "name", "b1", "netns", other.name])
    with holding(lock_file(weft, "busy1")):
        assert weft("GC", {**conf, "cni.dev/valid-attachments": []}).code == 0
        assert busy in node_links(node)
    assert weft("GC", {**conf, "cni.dev/valid-attachments": []}).code == 0
    assert busy not in node_links(node)


# --- issue 27: a standalone call imports only what its verb needs ----------------------

# each costs a standalone call milliseconds of import (inspect brings ast, dis and
# tokenize; socket sets up enums; datetime loads a C extension; pyroute2 ~0.2 s) and no
# verb needs one of them
HEAVY = ("dataclasses", "inspect", "ast", "tokenize", "typing", "socket", "copy", "subprocess", "pyroute2",
         "datetime", "_datetime")


def imported(stderr: str) -> set:
    """The modules a `python -X importtime` run imported (its stderr)."""
    return {line.split("|")[2].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2} - {"imported package"}


def test_standalone_add_check_del_import_nothing_heavy(weft, node, pods, tmp_path):
    with open(weft.exe) as handle:
        interpreter = handle.readline()[2:].split()[0]  # the launcher's #! names the venv's python
    traced = tmp_path / "weft-importtime"
    traced.write_text(f"#!/bin/sh\nexec {interpreter} -IS -X importtime {weft.exe} \"$@\"\n")
    traced.chmod(0o755)
    pod = pods()
    conf = weft.conf(ipMasq=True)
    added = weft("ADD", conf, pod, cid="light1", exe=str(traced))
    assert added.code == 0, added
    seen = {"ADD": imported(added.stderr)}
    checked = weft("CHECK", {**conf, "prevResult": added.json}, pod, cid="light1", exe=str(traced))
    assert checked.code == 0, checked
    seen["CHECK"] = imported(checked.stderr)
    deleted = weft("DEL", conf, pod, cid="light1", exe=str(traced))
    assert deleted.code == 0, deleted
    seen["DEL"] = imported(deleted.stderr)
    for verb, modules in seen.items():
        assert "cni_plugin.plugin.commands" in modules, verb  # the trace is of the handlers' run
        assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == [], verb
    assert pod_links(pod) == {"lo"} and weft.ipam_files() == []
