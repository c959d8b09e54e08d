"""history.whois over a timeline, and the `weftctl whois` CLI around it."""

import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from cni_plugin.cli import weftctl
from cni_plugin.ipam import history
from cni_plugin.ipam.handlers import HANDLERS
from cni_plugin.cni.dispatch import dispatch

T0 = datetime(2026, 11, 22, 18, 0, 0, tzinfo=timezone.utc)


def at(minutes):
    return T0 + timedelta(minutes=minutes)


def log(data_dir, network, *events):
    """events: (minute, "allocate"|"release", ip, containerID[, reason])."""
    path = os.path.join(data_dir, network, "history.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    records = []
    for minute, kind, ip, container, *reason in events:
        pod = ("kube-system", f"pod-{container}")
        records.append(history.entry(kind, ip, network, container, "eth0", pod,
                                     reason[0] if reason else "del", at=at(minute)))
    history.append(path, records)
    return path


@pytest.fixture
def timeline(tmp_path):
    """10.1.0.5: A from 0 to 10, B from 20 on; A again on fd00::5 from 5."""
    log(str(tmp_path), "weft",
        (0, "allocate", "10.1.0.5", "A"),
        (5, "allocate", "fd00::5", "A"),
        (10, "release", "10.1.0.5", "A"),
        (20, "allocate", "10.1.0.5", "B"))
    return str(tmp_path)


def holders(data_dir, ip, when):
    return [r["containerID"] for r in history.whois(data_dir, ip, when)]


@pytest.mark.parametrize("minute, expected", [
    (-1, []), (0, ["A"]), (9.9, ["A"]), (10, []), (15, []), (20, ["B"]), (99, ["B"]),
])
def test_holder_at_each_moment(timeline, minute, expected):
    assert holders(timeline, "10.1.0.5", at(minute)) == expected


def test_current_holder_when_no_time_is_given(timeline):
    assert holders(timeline, "10.1.0.5", None) == ["B"]
    assert holders(timeline, "fd00:0::5", None) == ["A"]  # any spelling of the address
    assert holders(timeline, "10.1.0.6", None) == []


def test_record_carries_pod_and_since(timeline):
    (record,) = history.whois(timeline, "10.1.0.5", at(30))
    assert record["podNamespace"] == "kube-system" and record["podName"] == "pod-B"
    assert record["ts"] == "2026-11-22T18:20:00.000000Z" and record["network"] == "weft"


def test_naive_time_means_utc(timeline):
    assert holders(timeline, "10.1.0.5", datetime(2026, 11, 22, 18, 5)) == ["A"]


def test_same_attachment_allocated_again_after_release(tmp_path):
    log(str(tmp_path), "weft",
        (0, "allocate", "10.1.0.5", "A"), (1, "release", "10.1.0.5", "A"),
        (2, "allocate", "10.1.0.5", "A"))
    assert holders(str(tmp_path), "10.1.0.5", at(1.5)) == []
    assert holders(str(tmp_path), "10.1.0.5", at(3)) == ["A"]


def test_release_on_another_network_does_not_end_a_holding(tmp_path):
    log(str(tmp_path), "weft", (0, "allocate", "10.1.0.5", "A"))
    log(str(tmp_path), "other", (1, "allocate", "10.1.0.5", "A"), (2, "release", "10.1.0.5", "A"))
    (record,) = history.whois(str(tmp_path), "10.1.0.5", at(3))
    assert record["network"] == "weft"


def test_corrupt_lines_are_skipped(tmp_path):
    path = log(str(tmp_path), "weft", (0, "allocate", "10.1.0.5", "A"))
    with open(path, "a") as f:
        f.write('{"truncated": \n[1,2]\n{"event":"release","ip":"nope","ts":"x"}\n'
                '{"event":"release","ip":"10.1.0.5","ts":"not a time","containerID":"A"}\n\n')
    log(str(tmp_path), "weft", (5, "allocate", "10.1.0.6", "B"))
    assert holders(str(tmp_path), "10.1.0.5", None) == ["A"]
    assert holders(str(tmp_path), "10.1.0.6", None) == ["B"]


def test_missing_data_dir_has_no_holders(tmp_path):
    assert history.whois(str(tmp_path / "nope"), "10.1.0.5") == []


# --- weftctl ------------------------------------------------------------------------


def test_cli_prints_the_holder(timeline, capsys):
    code = weftctl.main(["whois", "10.1.0.5", "--data-dir", timeline, "--at", "2026-11-22T18:05:00Z"])
    assert code == 0
    assert capsys.readouterr().out == (
        "10.1.0.5 held by kube-system/pod-A (container A, eth0) on network weft "
        "since 2026-11-22T18:00:00Z\n"
    )


@pytest.mark.parametrize("when", [
    "2026-11-22T18:25:00", "2026-11-22T18:25:00Z", "2026-11-22T19:25:00+01:00",
    "2026-11-22 18:25:00.5",
])
def test_cli_accepts_iso_times_with_or_without_zone(timeline, capsys, when):
    assert weftctl.main(["whois", "10.1.0.5", "--data-dir", timeline, "--at", when]) == 0
    assert "container B" in capsys.readouterr().out


def test_cli_zone_offset_is_honoured(timeline, capsys):
    # 18:15+01:00 is 17:15Z: before anything was allocated
    argv = ["whois", "10.1.0.5", "--data-dir", timeline, "--at", "2026-11-22T18:15:00+01:00"]
    assert weftctl.main(argv) == 1
    assert capsys.readouterr().out == "10.1.0.5: no holder at 2026-11-22T17:15:00Z\n"


def test_cli_no_holder_exits_1(timeline, capsys):
    assert weftctl.main(["whois", "10.1.0.5", "--data-dir", timeline, "--at", "2026-11-22T18:15:00Z"]) == 1
    assert capsys.readouterr().out == "10.1.0.5: no holder at 2026-11-22T18:15:00Z\n"


def test_cli_json(timeline, capsys):
    assert weftctl.main(["whois", "10.1.0.5", "--data-dir", timeline, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ip"] == "10.1.0.5"
    assert [h["containerID"] for h in out["holders"]] == ["B"]


@pytest.mark.parametrize("argv, fragment", [
    (["whois", "10.1.0.999"], "'10.1.0.999' is not an IP address"),
    (["whois", "10.1.0.5", "--at", "yesterday"], "--at 'yesterday' is not an ISO-8601 time"),
])
def test_cli_bad_input_exits_2_naming_the_value(timeline, capsys, argv, fragment):
    assert weftctl.main(argv + ["--data-dir", timeline]) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err and captured.out == ""


def test_cli_status_reads_the_agent_status_files(capsys, tmp_path):
    from cni_plugin import paths
    from cni_plugin.subnet import status_file

    status_file.write(paths.status_file(str(tmp_path), "weft"), {
        "network": "weft", "node": "n1", "ready": True, "problem": None, "conflict": None,
        "lease": {"subnet": "10.244.3.0/24", "publicIP": "192.168.1.2", "vtepMAC": "02:00:00:00:00:01"},
        "peers": ["10.244.4.0-24 n2 192.168.1.3"], "driftRepaired": 2})
    assert weftctl.main(["status", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "network weft on node n1: ready" in out and "10.244.4.0-24 n2" in out and "2 kernel" in out
    status_file.write(paths.status_file(str(tmp_path), "weft"), {
        "network": "weft", "node": "n1", "ready": False, "conflict": "held by n9"})
    assert weftctl.main(["status", "--run-dir", str(tmp_path)]) == 1
    assert "CONFLICT   held by n9" in capsys.readouterr().out
    status_file.write(paths.status_file(str(tmp_path), "weft"), {
        "network": "weft", "node": "n1", "nodeID": "ab" * 16, "ready": True, "peers": [],
        "refused": [{"key": "10.244.9.0-24", "node": "x", "reason": "public-ip",
                     "detail": "lease 10.244.9.0-24: PublicIP 127.0.0.1 is a loopback address"}]})
    assert weftctl.main(["status", "--run-dir", str(tmp_path)]) == 0, "refusals alone keep the node ready"
    out = capsys.readouterr().out
    assert "node ID    " + "ab" * 16 in out and "REFUSED    1 lease(s)" in out
    assert "10.244.9.0-24 x [public-ip]: lease 10.244.9.0-24: PublicIP 127.0.0.1 is a loopback" in out
    status_file.write(paths.status_file(str(tmp_path), "weft"), {
        "network": "weft", "node": "n1", "ready": False, "conflict": "two agents", "fatal": "two agents"})
    assert weftctl.main(["status", "--run-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FATAL      two agents" in out and "CONFLICT" not in out
    assert weftctl.main(["status", "--run-dir", str(tmp_path / "none")]) == 3
    assert "is weftd running" in capsys.readouterr().err


def test_cli_without_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        weftctl.main([])
    assert caught.value.code == 2


# --- end to end: handlers write, whois reads ----------------------------------------


def run(command, data_dir, container, args=""):
    conf = {"cniVersion": "1.1.0", "name": "weft", "type": "bridge",
            "ipam": {"type": "weft-ipam", "dataDir": data_dir, "ranges": [[{"subnet": "10.1.0.0/24"}]]}}
    environ = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/x",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": args}
    out, code = dispatch(HANDLERS, environ, json.dumps(conf).encode())
    assert code == 0, out


def test_whois_after_real_add_and_del(tmp_path, capsys):
    data_dir = str(tmp_path)
    before = history.now()
    run("ADD", data_dir, "1234abcd", "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-abc")
    during = history.now()
    run("DEL", data_dir, "1234abcd")
    after = history.now()
    assert holders(data_dir, "10.1.0.2", before - timedelta(seconds=1)) == []
    assert holders(data_dir, "10.1.0.2", during) == ["1234abcd"]
    assert holders(data_dir, "10.1.0.2", after) == []
    code = weftctl.main(["whois", "10.1.0.2", "--data-dir", data_dir, "--at", history.format_ts(during)])
    assert code == 0
    assert capsys.readouterr().out.startswith(
        "10.1.0.2 held by kube-system/coredns-abc (container 1234abcd, eth0) on network weft since "
    )


def test_a_record_stamped_now_reads_back_as_the_moment_it_was_written():
    """entry() without `at` stamps the time without datetime (timestamps.now_text, the
    per-pod path's): the same format as format_ts, parsed back within the call."""
    before = datetime.now(timezone.utc)
    record = history.entry(history.ALLOCATE, "10.1.0.5", "weft", "A", "eth0", ("ns", "a"))
    after = datetime.now(timezone.utc)
    stamped = history.parse_ts(record["ts"])
    assert before - timedelta(microseconds=1) <= stamped <= after
    assert record["ts"] == history.format_ts(stamped)  # 26 characters + Z, microseconds always
