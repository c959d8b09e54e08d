"""Flow records' pure parts (cni_plugin/flows/): the FlowLog key, policy numbers, the
journal's bounds and drops, name attribution over a reused address, records built from
conntrack entries, and the reader's merge, filters and escaping."""

import ipaddress
import json
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from cni_plugin.datapath import nlcodec as nl
from cni_plugin.flows import attribution, config, journal, marks, reader, record
from cni_plugin.subnet.lease import ConfigError, NetworkConfig

T0 = datetime(2026, 12, 7, 4, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("value,expected", [
    (True, "on"), (False, None), (None, None), ({}, "on"), ({"IPFIX": "10.0.0.5:4739"}, "IPFIX 10.0.0.5:4739"),
    ({"IPFIX": "[2001:db8::5]:4739"}, "IPFIX 2001:db8::5:4739"), ({"IPFIX": "collector.example:2055"}, None)])
def test_flowlog_values_that_turn_logging_on(value, expected):
    parsed = config.parse("network weft", value)
    if expected is None and value not in (False, None):
        assert parsed.ipfix == ("collector.example", 2055)
    else:
        assert (str(parsed) if parsed else None) == expected


@pytest.mark.parametrize("value,words", [
    ("yes", "FlowLog is \"yes\""), (1, "FlowLog is 1"), ({"IPFIX": 4739}, "FlowLog.IPFIX is 4739"),
    ({"IPFIX": "host"}, "not \"<host>:<port>\""), ({"IPFIX": "h:70000"}, "port 1-65535"),
    ({"IPFIX": "bad host!:4739"}, "neither an IP address nor a DNS name"), ({"ipfix": "a:1"}, "unknown key")])
def test_invalid_flowlog_is_refused_with_the_key_named(value, words):
    with pytest.raises(ConfigError) as refused:
        NetworkConfig.from_dict("weft", {"Network": "10.244.0.0/16", "FlowLog": value})
    assert "network weft: FlowLog" in str(refused.value) and words in str(refused.value)


def test_policy_numbers_persist_and_are_reused_only_when_all_are_taken(tmp_path):
    path = str(tmp_path / "state" / marks.NUMBERS_FILE)
    numbers = marks.PolicyNumbers(path)
    assert [numbers.number(r) for r in ("x/a", "x/b", "x/a")] == [1, 2, 1]
    again = marks.PolicyNumbers(path)
    assert again.ref(2) == "x/b" and again.number("y/c") == 3
    full = marks.PolicyNumbers()
    for index in range(marks.FIELD):
        full.number(f"ns/p{index}")
    assert full.number("ns/new", current=["ns/p1"]) == 1  # ns/p0, the oldest not in use, gave its number
    assert full.ref(1) == "ns/new"


def test_mark_layout_leaves_the_low_byte_alone():
    mask, value = marks.mark_bits("ingress", 5)
    assert mask == 0xFFF00000 and value == 5 << 20
    assert marks.decode(value | (7 << 8) | 0xAB) == (5, 7)
    assert not marks.WEFT_MASK & 0xFF


def _records(count, size=100):
    return [{"id": str(i), "pad": "x" * size} for i in range(count)]


def test_journal_rotates_at_its_size_and_keeps_its_files(tmp_path):
    dropped = []
    flows = journal.FlowJournal(str(tmp_path / "flows"), "weft", 4096, 3600, 2,
                                on_drop=lambda reason, n: dropped.append((reason, n)))
    for _ in range(40):
        assert flows.write(_records(5)) == 5
    names = sorted(os.listdir(tmp_path / "flows"))
    assert names == ["weft.jsonl", "weft.jsonl.1", "weft.jsonl.2"]
    assert all(os.path.getsize(tmp_path / "flows" / n) <= 4096 for n in names)
    assert stat.S_IMODE(os.stat(tmp_path / "flows" / "weft.jsonl").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "flows").st_mode) == 0o700
    assert dropped == []


def test_journal_rotates_at_its_age(tmp_path):
    clock = [1000.0]
    flows = journal.FlowJournal(str(tmp_path), "weft", 1 << 20, 60, 1, clock=lambda: clock[0])
    flows.write(_records(1))
    clock[0] += 61
    flows.write(_records(1))
    assert sorted(os.listdir(tmp_path)) == ["weft.jsonl", "weft.jsonl.1"]


def test_a_journal_that_cannot_be_written_drops_and_counts(tmp_path):
    dropped = []
    blocked = tmp_path / "flows"
    blocked.write_text("a file where the directory should be")
    flows = journal.FlowJournal(str(blocked), "weft", 1 << 20, 60, 1,
                                on_drop=lambda reason, n: dropped.append((reason, n)))
    assert flows.write(_records(3)) == 0
    assert dropped == [("write-error", 3)] and flows.last_error


def test_hostile_names_stay_data():
    hostile = "x/evil\n{\"verdict\":\"allowed\"}\x1b[2J"
    line = journal.encode({"srcPod": hostile, "verdict": "denied"})
    assert line.count(b"\n") == 1 and b"\x1b" not in line
    assert json.loads(line)["srcPod"] == hostile
    shown = reader.line({"start": "t", "node": "n", "proto": "tcp", "srcPod": hostile, "src": "1.2.3.4",
                         "sport": 1, "dst": "5.6.7.8", "dport": 2, "verdict": "denied"})
    assert "\x1b" not in shown and "\n" not in shown and "\\x1b" in shown


def test_an_ipv6_endpoint_reads_unambiguously_with_its_port():
    shown = reader.line({"start": "t", "node": "n", "proto": "tcp", "srcPod": "a/b", "src": "fd10::2", "sport": 80,
                         "dst": "fd10::3", "dport": None, "verdict": "allowed"})
    assert "a/b ([fd10::2]:80) -> fd10::3 ALLOWED" in shown, shown  # fd10::2:80 would be one address
    shown = reader.line({"start": "t", "node": "n", "proto": "udp", "src": "10.0.0.1", "sport": 53, "dst": "10.0.0.2",
                         "dport": 53, "verdict": "allowed"})
    assert "10.0.0.1:53 -> 10.0.0.2:53" in shown, shown


def _event(ts, event, ip, cid, pod):
    return (ts, {"ts": ts.isoformat(), "event": event, "ip": ip, "containerID": cid, "ifname": "eth0",
                 "network": "weft", "podNamespace": pod[0], "podName": pod[1]})


def test_a_reused_address_is_attributed_to_its_holder_at_the_time():
    names = attribution.Attribution()
    names.add([_event(T0, "allocate", "10.244.1.5", "c1", ("x", "old")),
               _event(T0 + timedelta(minutes=5), "release", "10.244.1.5", "c1", ("x", "old")),
               _event(T0 + timedelta(minutes=6), "allocate", "10.244.1.5", "c2", ("y", "new"))])
    assert names.pod("10.244.1.5", T0 + timedelta(minutes=1)) == "x/old"
    assert names.pod("10.244.1.5", T0 + timedelta(minutes=5, seconds=30)) is None
    assert names.pod("10.244.1.5", T0 + timedelta(minutes=7)) == "y/new"
    assert names.pod("10.244.1.5", T0 - timedelta(minutes=1)) is None


def _entry(src, dst, sport, dport, mark=0, reply_src=None, reply_port=None):
    a = lambda t: ipaddress.ip_address(t)  # noqa: E731
    return nl.Conntrack("destroy", 2, 42, nl.Tuple(a(src), a(dst), 6, sport, dport),
                        nl.Tuple(a(reply_src or dst), a(src), 6, reply_port or dport, sport), mark, 0,
                        (10, 1500), (8, 600), int(T0.timestamp() * 1e9), int(T0.timestamp() * 1e9) + 2_000_000_000)


def test_a_record_names_the_marked_policy_and_the_service_backend():
    names = attribution.Attribution()
    names.add([_event(T0 - timedelta(hours=1), "allocate", "10.244.1.9", "c9", ("x", "backend"))])
    refs = {3: "x/web"}
    entry = _entry("10.244.2.4", "10.96.0.10", 5555, 80, mark=(3 << 20) | 0x7, reply_src="10.244.1.9",
                   reply_port=8080)
    out = record.allowed(entry, node="n1", network="weft", first_seen=T0, now=T0, attribution=names,
                         policy_ref=refs.get, final=True, flow_key="k")
    assert (out["dst"], out["dport"], out["service"]) == ("10.244.1.9", 8080, {"ip": "10.96.0.10", "port": 80})
    assert out["policy"] == out["ingressPolicy"] == "x/web" and out["egressPolicy"] is None
    assert out["dstPod"] == "x/backend" and out["srcPod"] is None
    assert out["packets"] == {"sent": 10, "received": 8} and out["bytes"] == {"sent": 1500, "received": 600}
    assert out["start"] == "2026-12-07T04:00:00.000000Z" and out["end"] == "2026-12-07T04:00:02.000000Z"


@pytest.mark.parametrize("linger_s,end", [(0, "04:00:02.000000"), (1, "04:00:01.000000"), (5, "04:00:00.000000")])
def test_a_final_records_end_is_its_stop_less_the_lingering_never_before_its_start(linger_s, end):
    """The DESTROY's stop time is `expired`; `end` estimates the close: the stop less how
    long the entry's final TCP state keeps it (clamped: an entry killed before it
    expired, by a reused port or a flush, would otherwise end before it started)."""
    out = record.allowed(_entry("10.244.2.4", "10.244.1.9", 5555, 80), node="n1", network="weft", first_seen=T0,
                         now=T0, attribution=attribution.Attribution(), policy_ref=lambda n: None, final=True,
                         flow_key="k", linger_ns=linger_s * 1_000_000_000)
    assert out["end"] == f"2026-12-07T{end}Z" and out["expired"] == "2026-12-07T04:00:02.000000Z"
    open_entry = _entry("10.244.2.4", "10.244.1.9", 5555, 80)._replace(stop_ns=None)
    interim = record.allowed(open_entry, node="n1", network="weft", first_seen=T0, now=T0 + timedelta(seconds=9),
                             attribution=attribution.Attribution(), policy_ref=lambda n: None, final=False,
                             flow_key="k")
    assert "expired" not in interim and interim["end"] == "2026-12-07T04:00:09.000000Z"


def _flow(node, start, **more):
    base = {"id": f"{node}-{start}", "node": node, "network": "weft", "proto": "tcp", "src": "10.244.1.2",
            "sport": 4000, "dst": "10.244.2.3", "dport": 80, "verdict": "allowed", "policy": None,
            "srcPod": "y/c", "dstPod": "x/a", "start": start, "end": start,
            "bytes": {"sent": 10, "received": 5}, "packets": {"sent": 1, "received": 1}}
    base.update(more)
    return base


def _journal_dir(tmp_path, name, records):
    directory = tmp_path / name
    directory.mkdir()
    (directory / "weft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
    return str(directory)


def test_reader_merges_a_cross_node_pair_within_the_skew_window(tmp_path):
    one = _journal_dir(tmp_path, "n1", [_flow("n1", "2026-12-07T04:00:00Z"),
                                        _flow("n1", "2026-12-07T04:10:00Z", sport=4001)])
    two = _journal_dir(tmp_path, "n2", [_flow("n2", "2026-12-07T04:00:03Z", policy="x/p"),
                                        _flow("n2", "2026-12-07T04:10:09Z", sport=4001)])
    records = reader.read([one, two])
    assert [r["node"] for r in records] == ["n1", "n2", "n1", "n2"]
    merged = reader.merge_pairs(records)
    assert len(merged) == 3
    assert merged[0]["nodes"] == ["n1", "n2"] and merged[0]["policy"] == "x/p"


def test_reader_keeps_the_last_update_and_filters(tmp_path):
    directory = _journal_dir(tmp_path, "n1", [
        _flow("n1", "2026-12-07T04:00:00Z", id="a", final=False, bytes={"sent": 1, "received": 0}),
        _flow("n1", "2026-12-07T04:00:00Z", id="a", final=True),
        _flow("n1", "2026-12-07T05:00:00Z", id="b", verdict="denied", policy="x/p", srcPod="z/q", src="10.1.0.1")])
    records = reader.read([directory])
    assert [(r["id"], r.get("final")) for r in records] == [("a", True), ("b", None)]
    pick = lambda **kw: [r["id"] for r in records if reader.Filters(**kw)(r)]  # noqa: E731
    assert pick(verdict="denied") == ["b"] and pick(policy="x/p") == ["b"]
    assert pick(pod="y/c") == ["a"] and pick(namespace="z") == ["b"] and pick(peer="10.1.0.0/16") == ["b"]
    assert pick(port=4000) == ["a", "b"] and pick(node="n2") == []
    assert pick(since=datetime(2026, 12, 7, 4, 30, tzinfo=timezone.utc)) == ["b"]
    assert pick(until=datetime(2026, 12, 7, 4, 30, tzinfo=timezone.utc)) == ["a"]
