"""Allocation history: an append-only JSON-lines log per network, and `whois` over it.

Each line is one event:
  {"ts": "2026-11-22T18:00:00.123456Z", "event": "allocate"|"release", "ip": "10.1.0.5",
   "network": "weft", "containerID": ..., "ifname": ..., "podNamespace": ..., "podName": ...,
   "podUID": ..., "reason": "del"|"gc"|"rollback"}
  (podUID only when the runtime passed K8S_POD_UID; reason on releases only)
Writers hold the store lock; readers need no lock and skip lines they cannot parse.
"""

import ipaddress
import json
import os

from ..timestamps import format_ts, now, now_text, parse_ts  # noqa: F401 (re-exported for callers)
from .store import FILE_MODE, HISTORY_FILE

ALLOCATE = "allocate"
RELEASE = "release"


def entry(event: str, ip, network: str, container_id: str, ifname: str,
          pod: tuple, reason: str | None = None, at: "datetime | None" = None) -> dict:
    """One history record; pod is (namespace, name[, uid]), any may be None."""
    record = {
        "ts": format_ts(at) if at is not None else now_text(),
        "event": event,
        "ip": str(ip),
        "network": network,
        "containerID": container_id,
        "ifname": ifname,
        "podNamespace": pod[0],
        "podName": pod[1],
    }
    if len(pod) > 2 and pod[2]:  # K8S_POD_UID, which CRI runtimes pass (containerd 1.6)
        record["podUID"] = pod[2]
    if event == RELEASE:
        record["reason"] = reason
    return record


def append(path: str, records: list[dict]) -> None:
    """Append records to the log at path (O_APPEND, one write, fsync), all or nothing:
    a write cut short (a full disk takes what fits) is truncated away, so a torn line
    never swallows the record appended after it.  Writers hold the store lock."""
    if not records:
        return
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            data = b"\n" + data  # a crash tore the last line: start ours on a fresh one
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass  # read-only or worse: then nothing was written either
            raise
    finally:
        os.close(fd)


def _parse_line(line: str) -> "tuple[datetime, dict] | None":
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return _parse_record(record)


def _parse_record(record) -> "tuple[datetime, dict] | None":
    try:
        if not isinstance(record, dict) or record.get("event") not in (ALLOCATE, RELEASE):
            return None
        record["ip"] = str(ipaddress.ip_address(record["ip"]))
        return parse_ts(record["ts"]), record
    except (ValueError, KeyError, TypeError):
        return None


def read_events(path: str) -> "list[tuple[datetime, dict]]":
    """The parseable events of one log, in file order; corrupt lines are skipped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [e for e in map(_parse_line, f) if e is not None]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _history_paths(data_dir: str) -> list[str]:
    try:
        names = sorted(os.listdir(data_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [os.path.join(data_dir, n, HISTORY_FILE) for n in names]


def _holding_key(record: dict) -> tuple:
    return (record["ip"], record.get("containerID"), record.get("ifname"), record.get("network"))


def whois(data_dir: str, ip, at: "datetime | None" = None) -> list[dict]:
    """The allocate records of whoever held ip at `at` (now when None), across all networks
    of one node's store."""
    return holders([e for path in _history_paths(data_dir) for e in read_events(path)], ip, at)


def parsed(records) -> "list[tuple[datetime, dict]]":
    """(time, record) for every well-formed record (e.g. read back from etcd)."""
    return [e for e in map(_parse_record, records) if e is not None]


def holders(events, ip, at: "datetime | None" = None) -> list[dict]:
    """Whoever held ip at `at`, from (time, record) events of any number of nodes.

    A holding starts at an allocate event at or before `at` and ends at a release of the
    same (ip, containerID, ifname, network) at or before `at`.
    """
    wanted = str(ipaddress.ip_address(ip))
    if at is not None and at.tzinfo is None:
        from datetime import timezone

        at = at.replace(tzinfo=timezone.utc)
    relevant = sorted((e for e in events if e[1]["ip"] == wanted), key=lambda e: e[0])
    held = {}
    for moment, record in relevant:  # sorted is stable: file order breaks ties
        if at is not None and moment > at:
            break
        if record["event"] == ALLOCATE:
            held.setdefault(_holding_key(record), record)  # "since" is the first allocate
        else:
            held.pop(_holding_key(record), None)
    return list(held.values())
