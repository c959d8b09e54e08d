"""weft-ipam end to end in-process: dispatch(HANDLERS, environ, stdin) and the files on disk."""

import ipaddress
import json
import os
import threading

import pytest

from cni_plugin.cni.errors import (
    ADDRESS_UNAVAILABLE,
    ATTACHMENT_EXISTS,
    CHECK_FAILED,
    INVALID_NETCONF,
    IO_FAILURE,
    NOT_AVAILABLE,
    RANGE_EXHAUSTED,
)
from cni_plugin.ipam import history
from cni_plugin.ipam.handlers import HANDLERS
from cni_plugin.ipam.store import Store
from cni_plugin.cni.dispatch import dispatch

V4 = [{"subnet": "10.1.0.0/24"}]
V6 = [{"subnet": "fd00:1::/64"}]


def netconf(data_dir, *range_sets, **extra):
    ipam = {"type": "weft-ipam", "dataDir": str(data_dir), "ranges": [list(s) for s in range_sets or [V4]]}
    ipam.update(extra.pop("ipam", {}))
    return {"cniVersion": "1.1.0", "name": "weft", "type": "bridge", "ipam": ipam, **extra}


def run(command, conf, container="c1", ifname="eth0", args=""):
    environ = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": "/var/run/netns/x",
        "CNI_IFNAME": ifname,
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": args,
    }
    out, code = dispatch(HANDLERS, environ, json.dumps(conf).encode())
    return (json.loads(out) if out else None), code


def add(conf, container="c1", **kw):
    reply, code = run("ADD", conf, container, **kw)
    assert code == 0, reply
    return [ip["address"] for ip in reply["ips"]]


def fail(command, conf, container="c1", **kw):
    reply, code = run(command, conf, container, **kw)
    assert code == 1, reply
    return reply


def store_of(tmp_path):
    return Store(str(tmp_path), "weft")


def ip_files(tmp_path):
    return sorted(n for n in os.listdir(tmp_path / "weft") if _is_ip(n))


def _is_ip(name):
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def events(tmp_path):
    return [json.loads(line) for line in (tmp_path / "weft" / "history.jsonl").read_text().splitlines()]


# --- ADD ---------------------------------------------------------------------


def test_add_returns_result_and_writes_files(tmp_path):
    conf = netconf(tmp_path, ipam={"routes": [{"dst": "0.0.0.0/0"}]})
    reply, code = run("ADD", conf)
    assert code == 0
    assert reply == {
        "cniVersion": "1.1.0",
        "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    }
    assert (tmp_path / "weft" / "10.1.0.2").read_bytes() == b"c1\r\neth0"
    assert (tmp_path / "weft" / "by-attachment" / "c1:eth0").read_text() == "10.1.0.2\n"
    assert (tmp_path / "weft" / "last_reserved_ip.0").read_text() == "10.1.0.2"


def test_add_with_old_cni_version_renders_old_layout(tmp_path):
    conf = netconf(tmp_path)
    conf["cniVersion"] = "0.3.1"
    reply, code = run("ADD", conf)
    assert code == 0
    assert reply["ips"] == [{"version": "4", "address": "10.1.0.2/24", "gateway": "10.1.0.1"}]


def test_dual_stack_gets_one_address_per_range_set(tmp_path):
    conf = netconf(tmp_path, V4, V6)
    reply, code = run("ADD", conf)
    assert code == 0
    assert reply["ips"] == [
        {"address": "10.1.0.2/24", "gateway": "10.1.0.1"},
        {"address": "fd00:1::2/64", "gateway": "fd00:1::1"},
    ]
    assert ip_files(tmp_path) == ["10.1.0.2", "fd00:1::2"]
    assert (tmp_path / "weft" / "last_reserved_ip.1").read_text() == "fd00:1::2"


def test_dns_comes_from_resolv_conf(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.96.0.10\nsearch svc.cluster.local\noptions ndots:5\n")
    reply, code = run("ADD", netconf(tmp_path / "data", ipam={"resolvConf": str(resolv)}))
    assert code == 0
    assert reply["dns"] == {
        "nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"], "options": ["ndots:5"],
    }


def test_consecutive_adds_continue_round_robin_after_a_delete(tmp_path):
    conf = netconf(tmp_path)
    assert add(conf, "a") == ["10.1.0.2/24"]
    assert add(conf, "b") == ["10.1.0.3/24"]
    assert run("DEL", conf, "a")[1] == 0
    assert add(conf, "c") == ["10.1.0.4/24"]  # not the just-freed .2


def test_add_is_idempotent_for_the_same_attachment(tmp_path):
    conf = netconf(tmp_path, V4, V6)
    first = add(conf)
    again = add(conf)
    assert again == first
    assert ip_files(tmp_path) == ["10.1.0.2", "fd00:1::2"]
    assert os.listdir(tmp_path / "weft" / "by-attachment") == ["c1:eth0"]
    assert add(conf, ifname="eth1") == ["10.1.0.3/24", "fd00:1::3/64"]  # another attachment


def test_idempotent_add_with_a_different_requested_ip_is_refused(tmp_path):
    conf = netconf(tmp_path)
    add(conf)
    reply = fail("ADD", conf, args="IP=10.1.0.50")
    assert reply["code"] == ATTACHMENT_EXISTS
    assert "10.1.0.2" in reply["msg"] and "10.1.0.50" in reply["msg"]
    assert add(conf, args="IP=10.1.0.2") == ["10.1.0.2/24"]


def test_add_repairs_an_index_whose_ip_file_was_lost(tmp_path):
    conf = netconf(tmp_path)
    add(conf)
    os.unlink(tmp_path / "weft" / "10.1.0.2")  # as after a crash between index and file
    assert add(conf) == ["10.1.0.2/24"]
    assert (tmp_path / "weft" / "10.1.0.2").read_bytes() == b"c1\r\neth0"


def test_add_reallocates_when_the_index_no_longer_fits_the_config(tmp_path):
    add(netconf(tmp_path))
    moved = netconf(tmp_path, [{"subnet": "10.2.0.0/24"}])
    assert add(moved) == ["10.2.0.2/24"]
    assert ip_files(tmp_path) == ["10.2.0.2"]
    assert [e["event"] for e in events(tmp_path)] == ["allocate", "release", "allocate"]


# --- requested addresses -------------------------------------------------------


@pytest.mark.parametrize("source", ["runtimeConfig", "args", "CNI_ARGS"])
def test_requested_ips_from_each_source(tmp_path, source):
    conf = netconf(tmp_path, V4, V6)
    args = ""
    wanted = ["10.1.0.77", "fd00:1::77/64"]
    if source == "runtimeConfig":
        conf["runtimeConfig"] = {"ips": wanted}
    elif source == "args":
        conf["args"] = {"cni": {"ips": wanted}}
    else:
        args = "IP=" + ",".join(wanted)
    assert add(conf, args=args) == ["10.1.0.77/24", "fd00:1::77/64"]
    assert ip_files(tmp_path) == ["10.1.0.77", "fd00:1::77"]


def test_requested_ip_for_one_family_others_are_chosen(tmp_path):
    conf = netconf(tmp_path, V4, V6, runtimeConfig={"ips": ["fd00:1::99"]})
    assert add(conf) == ["10.1.0.2/24", "fd00:1::99/64"]


def test_requested_ip_held_by_someone_else(tmp_path):
    conf = netconf(tmp_path)
    add(conf, "holder", args="IP=10.1.0.9")
    reply = fail("ADD", conf, "late", args="IP=10.1.0.9")
    assert reply["code"] == ADDRESS_UNAVAILABLE
    assert "10.1.0.9" in reply["msg"] and "holder" in reply["msg"] and "eth0" in reply["msg"]
    assert not (tmp_path / "weft" / "by-attachment" / "late:eth0").exists()


@pytest.mark.parametrize("requested, fragments", [
    (["10.9.0.1"], ["10.9.0.1", "range set 0 (10.1.0.1-10.1.0.254)"]),
    (["10.1.0.5", "10.1.0.6"], ["10.1.0.5", "10.1.0.6", "range set 0"]),
    (["10.1.0.5/16"], ["/16", "10.1.0.0/24"]),
    (["not-an-ip"], ['runtimeConfig.ips[0] "not-an-ip" is not a valid IP address']),
    (["10.1.0.1"], ["10.1.0.1", "gateway"]),
    ([5], ["runtimeConfig.ips[0] must be a string"]),
])
def test_bad_requests_are_error_7(tmp_path, requested, fragments):
    reply = fail("ADD", netconf(tmp_path, runtimeConfig={"ips": requested}))
    assert reply["code"] == INVALID_NETCONF
    for fragment in fragments:
        assert fragment in reply["msg"]


def test_same_ip_requested_twice_is_fine(tmp_path):
    conf = netconf(tmp_path, runtimeConfig={"ips": ["10.1.0.5"]}, args={"cni": {"ips": ["10.1.0.5"]}})
    assert add(conf) == ["10.1.0.5/24"]


# --- exhaustion and rollback -----------------------------------------------------


def test_exhaustion_names_the_range_set(tmp_path):
    small = [{"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.2", "rangeEnd": "10.1.0.4"}]
    conf = netconf(tmp_path, small)
    assert [add(conf, f"c{i}")[0] for i in range(3)] == ["10.1.0.2/29", "10.1.0.3/29", "10.1.0.4/29"]
    reply = fail("ADD", conf, "c3")
    assert reply["code"] == RANGE_EXHAUSTED
    assert "no free address in range set 0 (10.1.0.2-10.1.0.4)" in reply["msg"]
    assert not (tmp_path / "weft" / "by-attachment" / "c3:eth0").exists()


def test_exhausting_the_second_family_leaks_nothing_of_the_first(tmp_path):
    one_v6 = [{"subnet": "fd00:1::/64", "rangeStart": "fd00:1::5", "rangeEnd": "fd00:1::5"}]
    conf = netconf(tmp_path, V4, one_v6)
    add(conf, "a")
    reply = fail("ADD", conf, "b")
    assert reply["code"] == RANGE_EXHAUSTED
    assert "range set 1 (fd00:1::5-fd00:1::5)" in reply["msg"] and "range set 0" not in reply["msg"]
    assert ip_files(tmp_path) == ["10.1.0.2", "fd00:1::5"]
    assert os.listdir(tmp_path / "weft" / "by-attachment") == ["a:eth0"]


def test_failure_after_the_first_family_rolls_it_back(tmp_path, monkeypatch):
    conf = netconf(tmp_path, V4, V6)
    real_reserve = Store.reserve

    def reserve_v4_only(self, ip, attachment):
        if ip.version == 6:
            raise OSError(28, "No space left on device")
        return real_reserve(self, ip, attachment)

    monkeypatch.setattr(Store, "reserve", reserve_v4_only)
    reply = fail("ADD", conf)
    assert reply["code"] == IO_FAILURE
    assert "No space left on device" in reply["msg"]
    assert ip_files(tmp_path) == []
    assert os.listdir(tmp_path / "weft" / "by-attachment") == []
    # the allocation never took effect, so the history never recorded it (nor a release)
    assert not (tmp_path / "weft" / "history.jsonl").exists() or events(tmp_path) == []
    assert history.whois(str(tmp_path), "10.1.0.2") == []
    monkeypatch.setattr(Store, "reserve", real_reserve)
    assert add(conf) == ["10.1.0.2/24", "fd00:1::2/64"]


def test_unusable_data_dir_on_add_is_io_failure(tmp_path):
    (tmp_path / "data").write_text("")
    reply = fail("ADD", netconf(tmp_path / "data"))
    assert reply["code"] == IO_FAILURE
    assert str(tmp_path / "data") in reply["msg"]


# --- DEL ---------------------------------------------------------------------------


def test_del_frees_files_and_index_and_is_idempotent(tmp_path):
    conf = netconf(tmp_path, V4, V6)
    add(conf)
    assert run("DEL", conf) == (None, 0)
    assert ip_files(tmp_path) == []
    assert os.listdir(tmp_path / "weft" / "by-attachment") == []
    assert run("DEL", conf) == (None, 0)
    assert run("DEL", conf, "never-added") == (None, 0)


def test_del_without_a_store_creates_nothing(tmp_path):
    assert run("DEL", netconf(tmp_path / "data")) == (None, 0)
    assert not (tmp_path / "data").exists()


def test_del_keeps_an_ip_file_that_names_someone_else(tmp_path):
    conf = netconf(tmp_path)
    add(conf)
    (tmp_path / "weft" / "10.1.0.2").write_bytes(b"other\r\neth0")
    assert run("DEL", conf)[1] == 0
    assert (tmp_path / "weft" / "10.1.0.2").read_bytes() == b"other\r\neth0"
    assert not (tmp_path / "weft" / "by-attachment" / "c1:eth0").exists()


def test_del_touches_only_its_own_files_without_walking(tmp_path, monkeypatch):
    conf = netconf(tmp_path, [{"subnet": "10.1.0.0/16"}])
    for i in range(200):
        add(conf, f"other{i}")
    mine = add(conf, "mine")[0].split("/")[0]

    def no_walking(*args, **kwargs):
        raise AssertionError("DEL must not list directories")

    for name in ("listdir", "scandir", "walk"):
        monkeypatch.setattr(os, name, no_walking)
    reply, code = run("DEL", conf, "mine")
    monkeypatch.undo()
    assert code == 0, reply
    assert not (tmp_path / "weft" / mine).exists()
    assert len(ip_files(tmp_path)) == 200
    assert len(os.listdir(tmp_path / "weft" / "by-attachment")) == 200


# --- CHECK -------------------------------------------------------------------------


def test_check_passes_for_a_live_allocation(tmp_path):
    conf = netconf(tmp_path, V4, V6)
    add(conf)
    assert run("CHECK", conf) == (None, 0)


def test_check_fails_without_allocation(tmp_path):
    conf = netconf(tmp_path)
    reply = fail("CHECK", conf)  # no store at all
    assert reply["code"] == CHECK_FAILED
    assert "c1" in reply["msg"] and "eth0" in reply["msg"]
    add(conf, "someone")
    assert fail("CHECK", conf)["code"] == CHECK_FAILED
    add(conf)
    run("DEL", conf)
    assert fail("CHECK", conf)["code"] == CHECK_FAILED


def test_check_fails_when_an_ip_file_names_someone_else(tmp_path):
    conf = netconf(tmp_path)
    add(conf)
    (tmp_path / "weft" / "10.1.0.2").write_bytes(b"intruder\r\neth9")
    reply = fail("CHECK", conf)
    assert reply["code"] == CHECK_FAILED
    for fragment in ("10.1.0.2", "c1", "eth0", "intruder"):
        assert fragment in reply["msg"]
    os.unlink(tmp_path / "weft" / "10.1.0.2")
    reply = fail("CHECK", conf)
    assert "10.1.0.2" in reply["msg"] and "not allocated" in reply["msg"]


# --- GC ------------------------------------------------------------------------------


def gc_conf(tmp_path, valid):
    conf = netconf(tmp_path)
    if valid is not None:
        conf["cni.dev/valid-attachments"] = [{"containerID": c, "ifname": i} for c, i in valid]
    return conf


def test_gc_frees_attachments_not_in_the_valid_list(tmp_path):
    conf = netconf(tmp_path)
    for name in ("keep", "drop1", "drop2"):
        add(conf, name)
    assert run("GC", gc_conf(tmp_path, [("keep", "eth0")])) == (None, 0)
    assert ip_files(tmp_path) == ["10.1.0.2"]
    assert os.listdir(tmp_path / "weft" / "by-attachment") == ["keep:eth0"]
    gc_events = [(e["containerID"], e["reason"]) for e in events(tmp_path) if e["event"] == "release"]
    assert sorted(gc_events) == [("drop1", "gc"), ("drop2", "gc")]


def test_gc_with_empty_list_frees_everything(tmp_path):
    conf = netconf(tmp_path, V4, V6)
    add(conf, "a")
    add(conf, "b")
    assert run("GC", gc_conf(tmp_path, []))[1] == 0
    assert ip_files(tmp_path) == []
    assert os.listdir(tmp_path / "weft" / "by-attachment") == []


def test_gc_cleans_stray_ip_files_and_adopts_valid_ones(tmp_path):
    conf = netconf(tmp_path)
    add(conf, "keep")
    store_dir = tmp_path / "weft"
    (store_dir / "10.1.0.50").write_bytes(b"ghost\r\neth0")  # no index anywhere
    (store_dir / "10.1.0.51").write_bytes(b"keep\r\neth1")   # host-local style, valid holder
    (store_dir / "by-attachment" / ".x.tmp").write_text("")
    assert run("GC", gc_conf(tmp_path, [("keep", "eth0"), ("keep", "eth1")]))[1] == 0
    assert ip_files(tmp_path) == ["10.1.0.2", "10.1.0.51"]
    assert (store_dir / "by-attachment" / "keep:eth1").read_text() == "10.1.0.51\n"
    assert not (store_dir / "by-attachment" / ".x.tmp").exists()
    assert run("DEL", conf, "keep", ifname="eth1")[1] == 0  # DEL finds the adopted address
    assert ip_files(tmp_path) == ["10.1.0.2"]


def test_gc_never_adopts_into_a_path_outside_the_index(tmp_path):
    conf = netconf(tmp_path)
    add(conf, "keep")
    (tmp_path / "weft" / "10.1.0.60").write_bytes(b"../../escape\r\neth0")
    valid = [{"containerID": "keep", "ifname": "eth0"}, {"containerID": "../../escape", "ifname": "eth0"}]
    conf["cni.dev/valid-attachments"] = valid
    assert run("GC", conf)[1] == 0
    assert (tmp_path / "weft" / "10.1.0.60").exists()  # still in use: kept
    assert sorted(os.listdir(tmp_path)) == ["weft"]
    assert os.listdir(tmp_path / "weft" / "by-attachment") == ["keep:eth0"]


@pytest.mark.parametrize("bad, fragment", [
    (None, "is missing"),
    ("all", "must be a list"),
    (["c1"], "cni.dev/valid-attachments[0] must be an object"),
    ([{"containerID": "c1"}], "cni.dev/valid-attachments[0] needs both containerID and ifname"),
])
def test_gc_needs_a_valid_attachment_list(tmp_path, bad, fragment):
    conf = netconf(tmp_path)
    if bad is not None:
        conf["cni.dev/valid-attachments"] = bad
    reply = fail("GC", conf)
    assert reply["code"] == INVALID_NETCONF
    assert "cni.dev/valid-attachments" in reply["msg"] and fragment in reply["msg"]


# --- STATUS ------------------------------------------------------------------------


def test_status_ok_and_creates_nothing(tmp_path):
    assert run("STATUS", netconf(tmp_path / "data")) == (None, 0)
    assert not (tmp_path / "data").exists()


def test_status_fails_when_data_dir_is_a_file(tmp_path):
    (tmp_path / "data").write_text("")
    reply = fail("STATUS", netconf(tmp_path / "data"))
    assert reply["code"] == NOT_AVAILABLE
    assert str(tmp_path / "data") in reply["msg"] and "Not a directory" in reply["msg"]


# --- history and concurrency ----------------------------------------------------------


def test_history_records_pod_and_reasons(tmp_path):
    conf = netconf(tmp_path)
    pod_args = "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-abc;IgnoreUnknown=1"
    add(conf, args=pod_args)
    add(conf, "bare")
    run("DEL", conf, args=pod_args)
    got = events(tmp_path)
    summary = [(e["event"], e["containerID"], e["podNamespace"], e["podName"], e.get("reason")) for e in got]
    assert summary == [
        ("allocate", "c1", "kube-system", "coredns-abc", None),
        ("allocate", "bare", None, None, None),
        ("release", "c1", "kube-system", "coredns-abc", "del"),
    ]
    assert all(e["network"] == "weft" and e["ifname"] == "eth0" for e in got)
    assert got[0]["ts"].endswith("Z") and len(got[0]["ts"]) == len("2026-11-22T18:00:00.000000Z")
    assert os.stat(tmp_path / "weft" / "history.jsonl").st_mode & 0o777 == 0o600


def test_fifty_concurrent_adds_get_fifty_distinct_addresses(tmp_path):
    conf = netconf(tmp_path, V4, V6)
    results, errors = {}, []

    def worker(i):
        reply, code = run("ADD", conf, f"pod{i}")
        if code:
            errors.append(reply)
        else:
            results[i] = [ip["address"] for ip in reply["ips"]]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    v4 = {r[0] for r in results.values()}
    v6 = {r[1] for r in results.values()}
    assert len(v4) == 50 and len(v6) == 50
    assert len(ip_files(tmp_path)) == 100
    assert len(os.listdir(tmp_path / "weft" / "by-attachment")) == 50


def test_del_check_gc_status_need_no_ranges(tmp_path):
    """A main plugin whose ranges came from a lease that is gone can still clean up."""
    conf = netconf(tmp_path)
    add(conf)
    bare = netconf(tmp_path)
    del bare["ipam"]["ranges"]
    assert run("CHECK", bare)[1] == 0
    assert run("STATUS", bare)[1] == 0
    assert run("DEL", bare)[1] == 0
    assert store_of(tmp_path).ip_files() == []
    assert fail("ADD", bare)["code"] == INVALID_NETCONF
