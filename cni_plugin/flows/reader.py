"""Reading flow journals back: gathered from any number of directories (one per node,
as a shipper or `kubectl cp` left them), the last update of each connection, filters,
and the merge of the two halves of a cross-node connection.

Ordering and clock skew: every record carries its own node's clock.  Records are
ordered by `start`, then `end`, node and id.  Two records are the halves of one
connection when they come from different nodes and share protocol, source, source
port, destination and destination port, and their starts lie within MERGE_WINDOW
seconds (the skew tolerated between nodes); the merged line keeps the earlier start,
the later end, the source node's counters (the other's when the source node's are
missing) and both node names.
"""

import ipaddress
import json
import os
import re
from datetime import timedelta

from ..timestamps import parse_ts

MERGE_WINDOW = 5.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def journal_files(directory: str) -> list:
    """The journals of a directory, oldest rotation first (<net>.jsonl.N ... <net>.jsonl)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    found = []
    for name in names:
        base, _, suffix = name.rpartition(".jsonl")
        if not base:
            continue
        if suffix == "":
            order = 0
        elif suffix.startswith(".") and suffix[1:].isdigit():
            order = int(suffix[1:])
        else:
            continue
        found.append((base, -order, os.path.join(directory, name)))
    return [path for _, _, path in sorted(found)]


def parse_line(line: str):
    """A record dict with parsed `_start`/`_end`, or None for a line that is not one."""
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            return None
        record["_start"] = parse_ts(record["start"])
        record["_end"] = parse_ts(record.get("end") or record["start"])
        return record
    except (ValueError, KeyError, TypeError):
        return None


def read(directories) -> list:
    """Every connection's last record (an interim update replaced by later ones)."""
    latest = {}
    for directory in directories:
        for path in journal_files(directory):
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    for line in handle:
                        record = parse_line(line)
                        if record is not None:
                            latest[(record.get("node"), record.get("network"), record.get("id"))] = record
            except OSError:
                continue
    return sort(latest.values())


def sort(records) -> list:
    return sorted(records, key=lambda r: (r["_start"], r["_end"], str(r.get("node")), str(r.get("id"))))


class Filters:
    """The weftctl flows filters; every given one must hold."""

    def __init__(self, pod=None, namespace=None, node=None, peer=None, port=None, verdict=None, policy=None,
                 since=None, until=None):
        self.pod, self.namespace, self.node, self.port = pod, namespace, node, port
        self.verdict, self.policy, self.since, self.until = verdict, policy, since, until
        self.peer = ipaddress.ip_network(peer, strict=False) if peer else None

    def __call__(self, r) -> bool:
        pods = (r.get("srcPod"), r.get("dstPod"))
        if self.pod and self.pod not in pods:
            return False
        if self.namespace and not any(p and p.partition("/")[0] == self.namespace for p in pods):
            return False
        if self.node and self.node not in (r.get("nodes") or [r.get("node")]):
            return False
        if self.port is not None and self.port not in (r.get("sport"), r.get("dport")):
            return False
        if self.verdict and r.get("verdict") != self.verdict:
            return False
        if self.policy and self.policy not in (r.get("policy"), *(r.get("policies") or ()),
                                               r.get("ingressPolicy"), r.get("egressPolicy")):
            return False
        if self.since and r["_end"] < self.since:
            return False
        if self.until and r["_start"] > self.until:
            return False
        if self.peer is not None:
            addresses = [r.get("src"), r.get("dst"), (r.get("service") or {}).get("ip")]
            if not any(_inside(a, self.peer) for a in addresses):
                return False
        return True


def _inside(text, network) -> bool:
    try:
        return text is not None and ipaddress.ip_address(text) in network
    except ValueError:
        return False


def _key(r) -> tuple:
    return (r.get("network"), r.get("proto"), r.get("src"), r.get("sport"), r.get("dst"), r.get("dport"),
            r.get("verdict"))


def merge_pairs(records, window: float = MERGE_WINDOW) -> list:
    """One line per cross-node connection (records sorted by start)."""
    out, waiting = [], {}
    limit = timedelta(seconds=window)
    for record in records:
        key = _key(record)
        partner = waiting.get(key)
        if partner is not None and partner.get("node") != record.get("node") and \
                abs(record["_start"] - partner["_start"]) <= limit and "nodes" not in partner:
            _combine(partner, record)
            del waiting[key]
            continue
        record = dict(record)
        out.append(record)
        waiting[key] = record
    return out


def _combine(first, second):
    """second's facts folded into first (in place)."""
    first["nodes"] = [first.get("node"), second.get("node")]
    first["_end"] = max(first["_end"], second["_end"])
    first["end"] = first["end"] if first["_end"] != second["_end"] else second["end"]
    for field in ("policy", "srcPod", "dstPod", "ingressPolicy", "egressPolicy"):
        if first.get(field) is None and second.get(field) is not None:
            first[field] = second[field]
    if not (first.get("bytes") or {}).get("sent") and (second.get("bytes") or {}).get("sent"):
        first["bytes"], first["packets"] = second["bytes"], second["packets"]


def public(record) -> dict:
    """The record without the reader's own fields."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def escaped(text) -> str:
    """Text for a terminal: control characters shown as \\xNN, never sent raw."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def line(r) -> str:
    """One table line."""
    def end(pod, address, port):  # an IPv6 address with a port in brackets, as in a URL (RFC 3986)
        if port is None:
            where = address
        else:
            where = f"[{address}]:{port}" if ":" in str(address) else f"{address}:{port}"
        return f"{pod} ({where})" if pod else where

    src = end(r.get("srcPod"), r.get("src"), r.get("sport"))
    dst = end(r.get("dstPod"), r.get("dst"), r.get("dport"))
    if r.get("service"):
        dst += f" via {r['service'].get('ip')}:{r['service'].get('port')}"
    nodes = ",".join(str(n) for n in r.get("nodes") or [r.get("node")])
    packets, octets = r.get("packets") or {}, r.get("bytes") or {}
    counted = f"{packets.get('sent')}/{packets.get('received')} pkt {octets.get('sent')}/{octets.get('received')} B"
    decided = r.get("policy") or ("-" if r.get("verdict") == "allowed" else "a policy")
    state = "" if r.get("final", True) else " (ongoing)"
    return escaped(f"{r.get('start')} {nodes} {r.get('proto')} {src} -> {dst} {str(r.get('verdict')).upper()} "
                   f"by {decided} {counted}{state}")
