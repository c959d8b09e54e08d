"""Flow records: one JSON object per connection per node (docs/flows.md has the format).

Stable fields: id, start, end (RFC 3339 UTC), node, network, proto, src, sport, dst,
dport, packets and bytes ({"sent", "received"} seen from the source), verdict
(allowed/denied), policy ("namespace/name" or null), srcPod, dstPod.  More here:
final (false on an interim update of a long-lived connection), expired (when the
kernel forgot the connection: its DESTROY's stop time; `end` is the close estimated
from it, see allowed()), ingressPolicy and
egressPolicy (the ct mark's two fields), policies (denied: every isolating policy
whose drop rule recorded the attempt), direction (denied: the hook that dropped),
service ({"ip", "port"}: the address the source dialled, when it was translated to
the backend in dst/dport).  A denied record counts the attempt the kernel recorded:
packets.sent 1, bytes 0 (a dropped packet's size is not recorded), sport null.
"""

import hashlib
from datetime import datetime, timezone

from ..timestamps import format_ns, format_ts
from . import marks

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 33: "dccp", 136: "udplite"}
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "SCTP": 132, "tcp": 6, "udp": 17, "sctp": 132}


_LAST = [(None, "")]  # (the moment formatted last, its text): a batch of records shares its `now`


def rfc3339(moment: datetime) -> str:
    last = _LAST[0]
    if moment is last[0]:
        return last[1]
    text = format_ts(moment)
    _LAST[0] = (moment, text)
    return text


def from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc)


def proto_name(number: int) -> str:
    return PROTOCOLS.get(number) or str(number)


def flow_id(node: str, ct_id: int, start_ns) -> str:
    """Unique per node and connection: the kernel's id is reused, with its start it is not."""
    return hashlib.sha1(f"{node}\0{ct_id}\0{start_ns}".encode()).hexdigest()[:16]


def allowed(entry, *, node: str, network: str, first_seen: datetime, now: datetime, attribution,
            policy_ref, final: bool, flow_key: str, linger_ns: int = 0) -> dict:
    """The record of a conntrack entry (nlcodec.Conntrack) the kernel let through.
    policy_ref(number) -> "namespace/name" or None; attribution: flows.attribution.
    A destroyed entry's stop time is `expired`; `end` is that time less linger_ns (how
    long the entry's final TCP state keeps it in the table: the connection's close,
    estimated), never before its start."""
    orig, reply = entry.orig, entry.reply
    start = from_ns(entry.start_ns) if entry.start_ns else first_seen
    start_text = format_ns(entry.start_ns) if entry.start_ns else rfc3339(first_seen)
    if entry.stop_ns:
        end_text = format_ns(max(entry.stop_ns - linger_ns, entry.start_ns or 0))
    else:
        end_text = rfc3339(now)
    sent = entry.orig_counters or (0, 0)
    received = entry.reply_counters or (0, 0)
    ingress, egress = marks.decode(entry.mark)
    ingress_ref, egress_ref = policy_ref(ingress), policy_ref(egress)
    dst, dport = orig.dst, orig.dport
    service = None
    if reply is not None and (reply.src != orig.dst or reply.sport != orig.dport) \
            and orig.proto not in (1, 58):  # destination translated (a Service): the backend
        service = {"ip": str(orig.dst), "port": orig.dport}
        dst, dport = reply.src, reply.sport
    record = {
        "id": flow_key, "start": start_text, "end": end_text, "node": node, "network": network,
        "proto": proto_name(orig.proto), "src": str(orig.src), "sport": orig.sport, "dst": str(dst),
        "dport": dport, "packets": {"sent": sent[0], "received": received[0]},
        "bytes": {"sent": sent[1], "received": received[1]}, "verdict": "allowed",
        "policy": ingress_ref or egress_ref, "srcPod": attribution.pod(str(orig.src), start),
        "dstPod": attribution.pod(str(dst), start), "final": final,
        "ingressPolicy": ingress_ref, "egressPolicy": egress_ref}
    if entry.stop_ns:
        record["expired"] = format_ns(entry.stop_ns)
    if service:
        record["service"] = service
    if orig.proto in (1, 58):  # ports are ICMP's id and type/code
        record["sport"], record["dport"] = 0, 0
        record["icmp"] = {"id": orig.sport, "type": orig.dport >> 8, "code": orig.dport & 0xFF}
    return record


def denied(direction: str, flow, policies: list, *, node: str, network: str, seen: datetime, attribution) -> dict:
    """The record of a denied attempt read from a denied-flow set: (src, dst, protocol,
    port); seen: when the kernel recorded it."""
    src, dst, protocol, port = flow
    number = PROTOCOL_NUMBERS.get(str(protocol)) if not str(protocol).isdigit() else int(protocol)
    when = rfc3339(seen)
    return {"id": hashlib.sha1(f"{node}\0{direction}\0{src}\0{dst}\0{protocol}\0{port}\0{when}".encode())
            .hexdigest()[:16],
            "start": when, "end": when, "node": node, "network": network,
            "proto": proto_name(number) if number else str(protocol).lower(),
            "src": str(src), "sport": None, "dst": str(dst), "dport": int(port) if str(port).isdigit() else port,
            "packets": {"sent": 1, "received": 0}, "bytes": {"sent": 0, "received": 0},
            "verdict": "denied", "policy": policies[0] if policies else None,
            "srcPod": attribution.pod(str(src), seen), "dstPod": attribution.pod(str(dst), seen),
            "final": True, "direction": direction, "policies": policies}
