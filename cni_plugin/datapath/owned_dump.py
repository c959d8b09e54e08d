"""weft's own routes, neighbours and FDB entries, read with kernel-filtered dumps.

The periodic reconcile reads back what weft programmed.  Through pyroute2 a read of a
5,000-node cluster's 15,000 entries took about 2.3 s of Python (every attribute of
every message decoded into objects, through its asyncio loop), holding the
interpreter lock while watch events waited.  Here one plain rtnetlink socket with
strict checking (NETLINK_GET_STRICT_CHK) asks the kernel to do the selection:

  routes      RTM_GETROUTE per family with rtm_table = main and rtm_protocol = weft's:
              the kernel sends only weft's main-table routes (no RTA_OIF filter: with
              DirectRouting or host-gw they leave through the underlay, not the device);
  neighbours  one RTM_GETNEIGH (AF_UNSPEC: IPv4 and IPv6) with NDA_IFINDEX = the device;
  FDB         RTM_GETNEIGH of AF_BRIDGE with NDA_IFINDEX = the device.

The kernel marks such answers NLM_F_DUMP_FILTERED; the same conditions are checked
again here, so a kernel that ignores a filter gives the same result, only slower.
Only the header fields and attributes the comparison needs are decoded (by nlcodec.py,
the package's one netlink codec), into plain values: RouteEntry, ipaddress objects,
lower-case MAC strings.

This is the reconcile's one reader: engine.read_state reads through it in the agent,
and netlink.Netlink's routes/permanent_neighbours/fdb hand their reads to it, so no
second decoder of the same entries exists to disagree with it.  Why by hand rather
than pyroute2 (measured with `python -m bench.reader_cost --peers 5000`, 2 shared
vCPUs, 2026-12-06): one full read of a 5,000-peer node's 15,000 entries (routes,
neighbours, FDB) costs ~75 ms of CPU here against ~1.3 s through pyroute2's IPRoute
dumps (every attribute of every message decoded into objects, through its asyncio
loop).  The agent's budget for a quiet 10 s interval is 100 ms of CPU, and the full
backstop read runs on a fixed interval whatever the notifications say: at 1.3 s a
read it alone would blow that budget and hold the interpreter lock while watch events
wait; at 75 ms it fits.  Writes stay on pyroute2 (one request per event) except the
first programming's batches (batch.py).

A dump the kernel marks interrupted (NLM_F_DUMP_INTR: the table changed while it was
being sent) is read again, a few times at most; then it counts as a failed read.
"""

import socket

from . import nlcodec as nl
from .constants import AF_BRIDGE, AF_INET, AF_INET6, FAMILY, NUD_PERMANENT, RT_TABLE_MAIN
from .errors import NetlinkError
from .nlcodec import RouteEntry
from .rtnl import RouteSocket

__all__ = ["OwnedDump", "RouteEntry", "open_reader"]
RECEIVE = 1 << 16       # the kernel fills at most 32 KiB per dump message batch
INTERRUPTED_RETRIES = 3


class OwnedDump(RouteSocket):
    """One strict rtnetlink socket, in this namespace or in `netns_path`."""

    def __init__(self, netns_path: str = None):
        super().__init__(netns_path, strict=True)

    # -- transport ---------------------------------------------------------------
    def _dump(self, msg_type: int, body: bytes, what: str, each) -> None:
        """Send one dump request; each(data, offset, length, msg_type) per answer."""
        for _ in range(INTERRUPTED_RETRIES):
            if not self._dump_once(msg_type, body, what, each):
                return
        raise NetlinkError(0, f"{what}: the kernel kept interrupting the dump (entries changing)")

    def _dump_once(self, msg_type: int, body: bytes, what: str, each) -> bool:
        """One dump; True when the kernel says it was interrupted (read again)."""
        self.seq += 1
        seq = self.seq
        self.sock.send(nl.message(msg_type, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, seq, body))
        interrupted = False
        while True:
            data = self.sock.recv(RECEIVE)
            for offset, length, kind, flags, got_seq in nl.messages(data):
                if got_seq != seq:
                    continue
                if flags & nl.NLM_F_DUMP_INTR:
                    interrupted = True
                if kind == nl.NLMSG_DONE:
                    return interrupted
                if kind == nl.NLMSG_ERROR:
                    code = nl.error_code(data, offset, length)
                    if code:
                        raise NetlinkError(code, what)
                    return interrupted
                each(data, offset, length, kind)

    # -- routes --------------------------------------------------------------------
    def routes(self, version: int, proto: int = None) -> list:
        """RouteEntry of every main-table route of one family (of one protocol)."""
        family = FAMILY[version]
        found = []

        def each(data, offset, length, kind):
            if kind != nl.RTM_NEWROUTE:
                return
            route = nl.decode_route(data, offset, length)
            if route.family == family and (proto is None or route.protocol == proto) \
                    and route.table == RT_TABLE_MAIN:
                found.append(route.entry)

        self._dump(nl.RTM_GETROUTE, nl.rtmsg(family=family, table=RT_TABLE_MAIN, protocol=proto or 0),
                   "list routes", each)
        return found

    # -- neighbours and FDB --------------------------------------------------------------
    def _neighbours(self, family: int, ifindex: int, what: str) -> list:
        """nlcodec.Neighbour of each answer to a dump filtered by link."""
        found = []

        def each(data, offset, length, kind):
            if kind == nl.RTM_NEWNEIGH:
                found.append(nl.decode_neighbour(data, offset, length))

        self._dump(nl.RTM_GETNEIGH, nl.ndmsg(nl.u32_attr(nl.NDA_IFINDEX, ifindex), family=family), what, each)
        return found

    def permanent_neighbours(self, ifindex: int) -> dict:
        """{ip_address: mac} of the permanent neighbours on the link (IPv4 and IPv6)."""
        return {n.dst: n.lladdr or "" for n in
                self._neighbours(socket.AF_UNSPEC, ifindex, f"list neighbours of link #{ifindex}")
                if n.family in (AF_INET, AF_INET6) and n.ifindex == ifindex and n.state & NUD_PERMANENT
                and n.dst is not None}

    def fdb(self, ifindex: int) -> dict:
        """{mac: (dst ip_address or None, permanent)} of the link's own FDB entries."""
        return {n.lladdr: (n.dst, bool(n.state & NUD_PERMANENT)) for n in
                self._neighbours(AF_BRIDGE, ifindex, f"list the FDB of link #{ifindex}")
                if n.family == AF_BRIDGE and n.ifindex == ifindex and n.lladdr is not None}


def open_reader(netns_path: str = None) -> OwnedDump:
    """The reconcile's reader for this namespace (or a test's view of a node's)."""
    return OwnedDump(netns_path)
