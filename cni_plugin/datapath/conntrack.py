"""The kernel's connection tracking, read for flow records: events and filtered dumps.

ConntrackEvents joins ctnetlink's DESTROY multicast group of the agent's network
namespace, and that group only: the kernel builds a message for a listener of each
group it is asked about, and NEW and UPDATE (a TCP connection's every state change:
about six a connection) cost the datapath ~10% of its new connections/s even with a
socket filter dropping them (docs/flows.md, the flows figure).  A DESTROY carries
everything a final record needs: the counters, the start and stop times
(nf_conntrack_acct, nf_conntrack_timestamp) and the TCP state the entry ended in.  A TCP
connection's DESTROY comes when the kernel forgets its entry, after TIME_WAIT
(nf_conntrack_tcp_timeout_time_wait, 120 s by default) and the kernel's garbage
collection, not at its close; the interim records of long-lived connections come from
dump() every --flow-log-interval.  Delivery is best effort on purpose: the kernel is
never asked for reliable delivery (NETLINK_BROADCAST_ERROR would make a slow reader
stall the datapath); a full receive buffer loses events, which the kernel reports as
ENOBUFS and receive() counts in `lost` (one ENOBUFS: at least one event lost).

dump(mark, mask, wanted) lists the entries whose ct mark matches (the kernel filters)
and that wanted(id, TCP state) asks for (the rest are not decoded), for the interim
records of long-lived connections.  enable_accounting() turns on the per-entry
byte/packet counters and start/stop times (they apply to connections created after
they are on).  lingering() reads how long an ended TCP entry stays in the table.
flush(ips) deletes the entries of a torn-down pod's addresses before they are released
(plugin/teardown.py, and a standalone DEL).  Messages are framed and parsed by nlcodec
only.
"""

import errno
import _socket as socket  # `socket` sets up enums: ~3 ms of a standalone DEL
import select

from . import nlcodec as nl
from .errors import DatapathError
from .rtnl import socket_in

RECEIVE_BUFFER = 8 << 20
GROUPS = 1 << (nl.NFNLGRP_CONNTRACK_DESTROY - 1)
DESTROY = nl.ctnetlink_type(nl.IPCTNL_MSG_CT_DELETE)
ENDED = (nl.TCP_CONNTRACK_TIME_WAIT, nl.TCP_CONNTRACK_CLOSE)
ACCOUNTING = ("/proc/sys/net/netfilter/nf_conntrack_acct", "/proc/sys/net/netfilter/nf_conntrack_timestamp")
LINGER = {nl.TCP_CONNTRACK_TIME_WAIT: "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait",
          nl.TCP_CONNTRACK_CLOSE: "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close"}


def _receive_buffer(sock, size: int) -> None:
    try:  # SO_RCVBUFFORCE goes past rmem_max for a root agent
        sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def enable_accounting() -> None:
    """nf_conntrack_acct=1 and nf_conntrack_timestamp=1 in this network namespace;
    DatapathError naming the knob when conntrack is not loaded or /proc/sys is read-only."""
    from . import sysctl

    for path in ACCOUNTING:
        if not sysctl.turn_on(path):
            raise DatapathError(f"{path} is missing: nf_conntrack is not loaded (`modprobe nf_conntrack`)")


def lingering() -> dict:
    """TCP state -> nanoseconds an entry that ended in it (TIME_WAIT, CLOSE) stays in
    this namespace's table before the kernel may forget it (its per-namespace timeout);
    a state whose knob cannot be read is left out."""
    from .sysctl import read_int

    seconds = {state: read_int(path) for state, path in LINGER.items()}
    return {state: value * 1_000_000_000 for state, value in seconds.items() if value is not None}


class ConntrackEvents:
    """The DESTROY events of this namespace's conntrack table: each entry the kernel
    forgets, with its final counters, times and TCP state."""

    def __init__(self, buffer: int = RECEIVE_BUFFER, netns_path: str = None):
        self.sock = socket_in(netns_path, nl.NETLINK_NETFILTER) if netns_path else \
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_NETFILTER)
        self.lost = 0          # ENOBUFS reports (each: one or more events lost)
        self.malformed = 0     # datagrams that did not parse (skipped)
        try:
            _receive_buffer(self.sock, buffer)
            self.sock.bind((0, GROUPS))
        except OSError as exc:
            self.sock.close()
            raise DatapathError(f"cannot join the conntrack event group: {exc.strerror}") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, timeout: float) -> list:
        """The entries destroyed (nlcodec.Conntrack, event "destroy"): waits up to
        `timeout` for the first datagram, then drains what is queued without waiting."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return []
        out = []
        while True:
            try:
                data = self.sock.recv(1 << 17, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost += 1
                    continue
                raise DatapathError(f"conntrack events: {exc.strerror}") from None
            if not data:
                return out
            try:
                out.extend(nl.decode_conntrack(data, offset, length, kind, flags)
                           for offset, length, kind, flags, _ in nl.messages(data) if kind == DESTROY)
            except nl.MalformedMessage:
                self.malformed += 1

    def close(self) -> None:
        self.sock.close()


def dump(mark: int = 0, mask: int = 0, wanted=None) -> list:
    """Every conntrack entry of this namespace whose (mark & mask) == mark and that
    wanted(id, TCP state) asks for (None: all); the others are not decoded."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_NETFILTER)
    out = []
    try:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        sock.send(nl.conntrack_dump_request(1, mark, mask))
        while True:
            data = sock.recv(1 << 17)
            for offset, length, kind, flags, _ in nl.messages(data):
                if kind == nl.NLMSG_DONE:
                    return out
                if kind == nl.NLMSG_ERROR:
                    code = nl.error_code(data, offset, length)
                    if code:
                        raise DatapathError(f"conntrack dump: {errno.errorcode.get(code, code)}")
                    continue
                if wanted is not None and not wanted(*nl.conntrack_brief(data, offset, length)):
                    continue
                out.append(nl.decode_conntrack(data, offset, length, kind, flags, "update"))
    except OSError as exc:
        raise DatapathError(f"conntrack dump: {exc}") from None
    finally:
        sock.close()


COUNT = "/proc/sys/net/netfilter/nf_conntrack_count"  # this namespace's entries
SMALL_TABLE = 2000  # entries: below this, one dump of them all costs less than filtered dumps


def _dumps(ips) -> list:
    """The dump bodies that find every entry of `ips`.  Each dump walks the kernel's
    whole conntrack hash (nf_conntrack_buckets, shared by every namespace: ~10 ms at
    262,144 buckets, even when nothing matches), so the fewest walks win: one dump of
    every entry of this namespace when it holds few (each then decoded here), else two
    kernel-filtered dumps per address."""
    from .sysctl import read_int

    count = read_int(COUNT)
    if count is not None and count < SMALL_TABLE:
        return [nl.nfgenmsg(0)]  # every family
    return [nl.conntrack_address_dump(ip, reply, source=True) for ip in ips for reply in (False, True)]


def flush(ips) -> int:
    """Delete every entry of this namespace that has one of `ips` (ipaddress objects) in
    either direction; the number deleted.  The teardown of a DEL calls it before the
    addresses are released: an entry outliving its pod would make a later pod given the
    same address inherit its connections (accepted as ESTABLISHED by a policy that would
    refuse a new one, or NATed as someone else's).

    The entries are found by dumps (_dumps: one of the whole namespace when it holds
    few entries, else dumps filtered by CTA_FILTER, Linux 5.8+, two per address: the
    original direction's source, for connections the pod opened, masqueraded or not,
    and the reply direction's source, for connections to the pod, straight or DNATed to
    it from a Service address); each is deleted by the original tuple the dump gave,
    handed back unparsed; one already gone is not an error.  pyroute2's client took
    ~130 ms a flush: too much for a queue that follows pod churn.  Every dumped entry
    is deleted only when one of `ips` is in it (holds()), whatever the kernel filtered:
    the unfiltered dump relies on it, and so does a kernel before 5.8, which ignores
    CTA_FILTER and dumps every entry of the family."""
    from .errors import NetlinkError
    from .rtnl import RouteSocket

    ips = list(ips)
    removed = 0
    try:
        with RouteSocket(protocol=nl.NETLINK_NETFILTER) as ct:
            found = {}
            for body in _dumps(ips):
                for close, parsed in ct._request(nl.ctnetlink_type(nl.IPCTNL_MSG_CT_GET),
                                                 nl.NLM_F_REQUEST | nl.NLM_F_DUMP, body,
                                                 "list the conntrack entries", nl.conntrack_entry):
                    if any(holds(parsed, ip) for ip in ips):
                        found[(close.family, close.tuple_orig, close.zone)] = close
            for entry in found.values():
                try:
                    ct._request(nl.ctnetlink_type(nl.IPCTNL_MSG_CT_DELETE), nl.NLM_F_REQUEST | nl.NLM_F_ACK,
                                nl.conntrack_delete(entry), "delete a conntrack entry")
                    removed += 1
                except NetlinkError as exc:
                    if exc.code != errno.ENOENT:  # expired meanwhile
                        raise
    except NetlinkError as exc:
        if exc.code == errno.ENOENT and not removed:  # no conntrack in this namespace's kernel: nothing kept
            return 0
        raise DatapathError(f"cannot flush the conntrack entries of {', '.join(map(str, ips))}: {exc}") from None
    except OSError as exc:
        raise DatapathError(f"cannot flush the conntrack entries of {', '.join(map(str, ips))}: {exc}") from None
    return removed


def holds(entry, ip) -> bool:
    """Whether `ip` is the source of either direction of a conntrack entry (what flush()
    deletes; the kernel's CTA_FILTER asks the same, on kernels that know it)."""
    return entry.orig.src == ip or (entry.reply is not None and entry.reply.src == ip)
