"""IPFIX (RFC 7011) export of flow records over UDP: the one IPFIX codec of weft.

No maintained Python library encodes IPFIX (PyPI has a 2014 package and collectors
that only parse), so this small module frames it: a message header, a template set
(one template per address family) and data sets of one-way records, in standard
information elements (IANA "IPFIX Information Elements"):

    sourceIPv4Address (8) / sourceIPv6Address (27)            4 / 16 bytes
    destinationIPv4Address (12) / destinationIPv6Address (28) 4 / 16
    sourceTransportPort (7), destinationTransportPort (11)    2 each
    protocolIdentifier (4)                                    1
    flowStartMilliseconds (152), flowEndMilliseconds (153)    8 each
    octetDeltaCount (1), packetDeltaCount (2)                 8 each
    forwardingStatus (89)                                     1 (RFC 7270: reduced-size unsigned32)
    flowEndReason (136)                                       1

What a journal record becomes:
  - an allowed connection: two records, source -> destination with the counters the
    source sent and destination -> source with what it received; forwardingStatus 64
    (forwarded); flowEndReason 3 (end of flow: a TCP close) or 1 (idle timeout: the
    conntrack entry of UDP and the rest timed out) on the final record, 2 (active
    timeout) on an interim one.  Counters are deltas: an interim record carries what
    was counted since the connection's previous export, the final one the rest, so a
    collector's sum over an id is the journal's final total;
  - a denied attempt: one record, source -> destination, packetDeltaCount 1,
    octetDeltaCount 0 (the journal records the attempt, not its size), forwardingStatus
    129 (dropped: ACL deny), flowEndReason 3.

Workload names and policies stay in the JSON journal.  Over UDP templates are resent
every template interval (RFC 7011 section 8.4) and with the first message.  Messages
are kept under MAX_MESSAGE bytes (no IP fragmentation on a 1500-byte path).  decode()
reads messages back (tests, and the fuzz test of this codec).
"""

import ipaddress
import socket
import struct
import time

VERSION = 10
TEMPLATE_SET = 2
TEMPLATES = {4: 256, 6: 257}
MAX_MESSAGE = 1400
HEADER = struct.Struct("!HHIII")     # version, length, export time, sequence number, observation domain
SET_HEADER = struct.Struct("!HH")    # set id, length
FIELD = struct.Struct("!HH")         # information element id, length
IE = {"sourceIPv4Address": 8, "destinationIPv4Address": 12, "sourceIPv6Address": 27,
      "destinationIPv6Address": 28, "sourceTransportPort": 7, "destinationTransportPort": 11,
      "protocolIdentifier": 4, "flowStartMilliseconds": 152, "flowEndMilliseconds": 153,
      "octetDeltaCount": 1, "packetDeltaCount": 2, "forwardingStatus": 89, "flowEndReason": 136}
_LAYOUT = {v: struct.Struct(f"!{a}s{a}sHHBQQQQBB") for v, a in ((4, 4), (6, 16))}
FORWARDED, DROPPED_ACL_DENY = 0x40, 0x81      # forwardingStatus: status bits 01 / 10, reason code
IDLE_TIMEOUT, ACTIVE_TIMEOUT, END_OF_FLOW = 1, 2, 3  # flowEndReason
REPORTED_MAX = 65536  # connections whose interim counters are remembered (oldest forgotten first)
_ADDRESSES = {8: 4, 12: 4, 27: 16, 28: 16}
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "dccp": 33, "udplite": 136}


def _fields(version: int) -> list:
    src, dst = ("sourceIPv4Address", "destinationIPv4Address") if version == 4 else \
        ("sourceIPv6Address", "destinationIPv6Address")
    size = 4 if version == 4 else 16
    return [(IE[src], size), (IE[dst], size), (IE["sourceTransportPort"], 2), (IE["destinationTransportPort"], 2),
            (IE["protocolIdentifier"], 1), (IE["flowStartMilliseconds"], 8), (IE["flowEndMilliseconds"], 8),
            (IE["octetDeltaCount"], 8), (IE["packetDeltaCount"], 8), (IE["forwardingStatus"], 1),
            (IE["flowEndReason"], 1)]


def template_set() -> bytes:
    body = b""
    for version, template_id in TEMPLATES.items():
        fields = _fields(version)
        body += FIELD.pack(template_id, len(fields)) + b"".join(FIELD.pack(i, n) for i, n in fields)
    return SET_HEADER.pack(TEMPLATE_SET, SET_HEADER.size + len(body)) + body


def _millis(text: str) -> int:
    from ..timestamps import parse_ts

    return int(parse_ts(text).timestamp() * 1000)


def counters(record: dict) -> tuple:
    """(packets sent, bytes sent, packets received, bytes received) of a journal record."""
    packets, octets = record["packets"], record["bytes"]
    return (packets.get("sent") or 0, octets.get("sent") or 0, packets.get("received") or 0,
            octets.get("received") or 0)


def one_way(record: dict, before: tuple = None) -> list:
    """(version, packed data record) of a journal record: two for an allowed connection,
    one for a denied attempt; an empty list when its addresses or protocol cannot be
    expressed.  before: counters() already exported for this connection (its interim
    records): the records carry the difference."""
    try:
        src, dst = ipaddress.ip_address(record["src"]), ipaddress.ip_address(record["dst"])
        proto = PROTOCOLS.get(record["proto"]) if not str(record["proto"]).isdigit() else int(record["proto"])
        start, end = _millis(record["start"]), _millis(record["end"])
        sport, dport = int(record.get("sport") or 0), int(record.get("dport") or 0)
        now = counters(record)
    except (KeyError, ValueError, TypeError, AttributeError):
        return []
    if proto is None or src.version != dst.version:
        return []
    layout = _LAYOUT[src.version]
    if record.get("verdict") == "denied":
        return [(src.version, layout.pack(src.packed, dst.packed, sport, dport, proto, start, end, 0,
                                          max(now[0], 1), DROPPED_ACL_DENY, END_OF_FLOW))]
    if not record.get("final", True):
        reason = ACTIVE_TIMEOUT
    else:
        reason = END_OF_FLOW if proto == 6 else IDLE_TIMEOUT
    ps, bs, pr, br = (max(0, n - b) for n, b in zip(now, before or (0, 0, 0, 0)))
    return [(src.version, layout.pack(src.packed, dst.packed, sport, dport, proto, start, end, bs, ps,
                                      FORWARDED, reason)),
            (src.version, layout.pack(dst.packed, src.packed, dport, sport, proto, start, end, br, pr,
                                      FORWARDED, reason))]


def _exported(records, reported, stamp) -> list:
    """The one-way records of journal records; reported (record id -> (counters()
    exported so far, stamp of that export)) turns an interim record's counters and the
    final one's into deltas, and is updated (a final record's id leaves it)."""
    if reported is None:
        return [r for record in records for r in one_way(record)]
    out = []
    for record in records:
        key = record.get("id") if record.get("verdict") != "denied" else None
        before = reported.pop(key, (None,))[0] if key else None
        rows = one_way(record, before)
        out += rows
        if key and rows and not record.get("final", True):
            reported[key] = (counters(record), stamp)
            while len(reported) > REPORTED_MAX:  # a connection whose end never came: forgotten
                reported.pop(next(iter(reported)))
    return out


def messages(records, sequence: int, export_time: int, domain: int, with_templates: bool,
             reported: dict = None, stamp: float = None) -> tuple:
    """([message bytes], the sequence number after them): journal records packed into
    messages of at most MAX_MESSAGE bytes, templates in front of the first when asked;
    reported, stamp: see _exported (reported None: every record's counters as they are)."""
    pending = _exported(records, reported, stamp)
    out = []
    templates = template_set() if with_templates else b""
    while pending or templates:
        body, count = templates, 0
        templates = b""
        room = MAX_MESSAGE - HEADER.size - len(body)
        while pending:
            version = pending[0][0]
            size = _LAYOUT[version].size
            batch = []
            while pending and pending[0][0] == version and room - SET_HEADER.size - (len(batch) + 1) * size >= 0:
                batch.append(pending.pop(0)[1])
            if not batch:
                break
            data = b"".join(batch)
            body += SET_HEADER.pack(TEMPLATES[version], SET_HEADER.size + len(data)) + data
            room -= SET_HEADER.size + len(data)
            count += len(batch)
        out.append(HEADER.pack(VERSION, HEADER.size + len(body), export_time, sequence & 0xFFFFFFFF, domain) + body)
        sequence += count
    return out, sequence


class MalformedIPFIX(ValueError):
    pass


def decode(message: bytes, templates: dict) -> tuple:
    """(header fields, [records as {IE id: value}]) of one message; templates (template id
    -> [(IE id, length)]) is filled from template sets and used for data sets."""
    if len(message) < HEADER.size:
        raise MalformedIPFIX(f"{len(message)} bytes, less than a message header")
    version, length, export_time, sequence, domain = HEADER.unpack_from(message)
    if version != VERSION or length != len(message):
        raise MalformedIPFIX(f"version {version}, length {length} of {len(message)} bytes")
    at, records = HEADER.size, []
    while at < length:
        if length - at < SET_HEADER.size:
            raise MalformedIPFIX(f"{length - at} bytes left at {at}, less than a set header")
        set_id, set_length = SET_HEADER.unpack_from(message, at)
        if set_length < SET_HEADER.size or at + set_length > length:
            raise MalformedIPFIX(f"a set at {at} claims {set_length} bytes")
        body, end = at + SET_HEADER.size, at + set_length
        if set_id == TEMPLATE_SET:
            while end - body >= FIELD.size:
                template_id, count = FIELD.unpack_from(message, body)
                body += FIELD.size
                if end - body < count * FIELD.size:
                    raise MalformedIPFIX(f"template {template_id} claims {count} fields")
                fields = [FIELD.unpack_from(message, body + i * FIELD.size) for i in range(count)]
                if any(ie in _ADDRESSES and n != _ADDRESSES[ie] for ie, n in fields):
                    raise MalformedIPFIX(f"template {template_id} has an address of the wrong length")
                templates[template_id] = fields
                body += count * FIELD.size
        elif set_id >= 256:
            fields = templates.get(set_id)
            if fields is None:
                raise MalformedIPFIX(f"data set {set_id} without its template")
            size = sum(n for _, n in fields)
            while size and end - body >= size:
                record = {}
                for ie, n in fields:
                    raw = message[body:body + n]
                    record[ie] = str(ipaddress.ip_address(raw)) if ie in _ADDRESSES else int.from_bytes(raw, "big")
                    body += n
                records.append(record)
        at = end
    return (version, length, export_time, sequence, domain), records


class Exporter:
    """Sends flow records to one collector; never blocks (a full socket drops, counted)."""

    def __init__(self, collector: tuple, template_interval: float, domain: int = 1):
        self.host, self.port = collector
        self.template_interval = template_interval
        self.domain = domain
        self.sequence = 0
        self.templates_due = 0.0
        self.sock, self.address = None, None
        self.sent_messages = self.sent_records = self.failed = 0
        self.reported = {}  # record id -> (counters exported by its interim records, monotonic time of the last)
        self.error = None

    def _connect(self) -> bool:
        if self.sock is not None:
            return True
        try:
            family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
            self.sock = socket.socket(family, kind, proto)
            self.sock.setblocking(False)
            self.address = address
            return True
        except OSError as exc:
            self.error = f"collector {self.host}:{self.port}: {exc}"
            return False

    def export(self, records) -> None:
        now = time.monotonic()
        with_templates = now >= self.templates_due
        if not records and not with_templates:
            return
        if not self._connect():
            self.failed += len(records)
            return
        out, sequence = messages(records, self.sequence, int(time.time()), self.domain, with_templates,
                                 self.reported, now)
        if with_templates:
            self.templates_due = now + self.template_interval
        for message in out:
            try:
                self.sock.sendto(message, self.address)
                self.sent_messages += 1
            except OSError as exc:  # a full buffer or an unreachable collector: those records are lost
                self.failed += 1
                self.error = f"collector {self.host}:{self.port}: {exc.strerror or exc}"
        self.sent_records += sequence - self.sequence
        self.sequence = sequence

    def forget_stale(self, horizon: float) -> None:
        """Forget the interim counters of connections none of whose records was exported
        for `horizon` seconds (one whose final record never came: its DESTROY lost to an
        overflow).  An open connection is exported every --flow-log-interval; a closed one
        waits for its final record at most the collector's DONE_KEEP: the horizon covers
        both, so no counters are forgotten that a final record would still need."""
        now = time.monotonic()
        for key in [key for key, (_, at) in self.reported.items() if now - at > horizon]:
            self.reported.pop(key, None)

    def tick(self) -> None:
        """Resend the templates when due (also when no record flows)."""
        if time.monotonic() >= self.templates_due:
            self.export([])

    def status(self) -> dict:
        return {"collector": f"{self.host}:{self.port}", "messages": self.sent_messages,
                "records": self.sent_records, "failed": self.failed, "error": self.error}

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
