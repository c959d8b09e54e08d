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
Only the header fields and attributes the comparison needs are decoded, into the
same plain values netlink.Netlink's readers return (RouteEntry, ipaddress objects,
lower-case MAC strings): engine.read_state works on either.

A dump the kernel marks interrupted (NLM_F_DUMP_INTR: the table changed while it was
being sent) is read again, a few times at most; then it counts as a failed read.
"""

import ipaddress
import socket
import struct

from .constants import (AF_BRIDGE, AF_INET, AF_INET6, FAMILY, NUD_PERMANENT, RT_TABLE_MAIN,
                        RTNH_F_ONLINK)
from .errors import NetlinkError
from .netlink import RouteEntry
from .rtnl import RouteSocket

NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLM_F_DUMP_INTR = 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETROUTE, RTM_GETNEIGH = 26, 30
RTM_NEWROUTE, RTM_NEWNEIGH = 24, 28
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 9, 15
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8
RECEIVE = 1 << 16       # the kernel fills at most 32 KiB per dump message batch
INTERRUPTED_RETRIES = 3

_HEADER = struct.Struct("=IHHII")   # nlmsghdr: length, type, flags, sequence, port
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NDMSG = struct.Struct("=BBHiHBB")   # family, pad, pad, ifindex, state, flags, type
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_RTNH = struct.Struct("=HBBi")       # rtnexthop: length, flags, hops, ifindex
_NETWORK = {AF_INET: ipaddress.IPv4Network, AF_INET6: ipaddress.IPv6Network}
_ADDRESS = {4: ipaddress.IPv4Address, 16: ipaddress.IPv6Address}


def _attrs(data, start: int, end: int, wanted) -> dict:
    """{type: value bytes} of the attributes in data[start:end] whose type is wanted."""
    found = {}
    while start + 4 <= end:
        length, kind = _ATTR.unpack_from(data, start)
        if length < 4:
            break
        kind &= 0x3FFF
        if kind in wanted:
            found[kind] = data[start + 4:start + length]
        start += (length + 3) & ~3
    return found


def _attribute(kind: int, value: bytes) -> bytes:
    packed = _ATTR.pack(4 + len(value), kind) + value
    return packed + b"\0" * (-len(packed) % 4)


def _address(raw: bytes):
    cls = _ADDRESS.get(len(raw))
    return cls(raw) if cls is not None else None


def _mac(raw: bytes) -> str:
    return raw.hex(":")


def _neighbour(data, offset: int, length: int, kind: int) -> tuple:
    """(family, ifindex, state, {NDA_DST, NDA_LLADDR}) of one answer (family None: not a
    neighbour)."""
    if kind != RTM_NEWNEIGH:
        return None, None, 0, {}
    body = offset + _HEADER.size
    family, _, _, index, state, _, _ = _NDMSG.unpack_from(data, body)
    return family, index, state, _attrs(data, body + _NDMSG.size, offset + length, (NDA_DST, NDA_LLADDR))


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
        self.sock.send(_HEADER.pack(_HEADER.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
                       + body)
        interrupted = False
        while True:
            data = self.sock.recv(RECEIVE)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, flags, got_seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    break
                if got_seq == seq:
                    if flags & NLM_F_DUMP_INTR:
                        interrupted = True
                    if kind == NLMSG_DONE:
                        return interrupted
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                        if code:
                            raise NetlinkError(code, what)
                        return interrupted
                    each(data, offset, length, kind)
                offset += (length + 3) & ~3

    # -- routes --------------------------------------------------------------------
    def routes(self, version: int, proto: int = None) -> list:
        """RouteEntry of every main-table route of one family (of one protocol), as
        netlink.Netlink.routes returns them."""
        family = FAMILY[version]
        network = _NETWORK[family]
        found = []

        def each(data, offset, length, kind):
            if kind != RTM_NEWROUTE:
                return
            body = offset + _HEADER.size
            (rt_family, dst_len, _, _, table, protocol, _, _, flags) = _RTMSG.unpack_from(data, body)
            if rt_family != family or (proto is not None and protocol != proto):
                return
            attrs = _attrs(data, body + _RTMSG.size, offset + length,
                           (RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE))
            if RTA_TABLE in attrs:
                table = _U32.unpack(attrs[RTA_TABLE][:4])[0]
            if table != RT_TABLE_MAIN:
                return
            dst = attrs.get(RTA_DST)
            gateway = attrs.get(RTA_GATEWAY)
            oif = attrs.get(RTA_OIF)
            if oif is not None:
                oif = _U32.unpack(oif[:4])[0]
            elif RTA_MULTIPATH in attrs and len(attrs[RTA_MULTIPATH]) >= _RTNH.size:
                oif = _RTNH.unpack_from(attrs[RTA_MULTIPATH], 0)[3]  # the first nexthop's
            found.append(RouteEntry(network((int.from_bytes(dst, "big") if dst else 0, dst_len)),
                                    _address(gateway) if gateway else None, oif,
                                    bool(flags & RTNH_F_ONLINK)))

        self._dump(RTM_GETROUTE, _RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, proto or 0, 0, 0, 0),
                   "list routes", each)
        return found

    # -- neighbours and FDB --------------------------------------------------------------
    def _neighbour_dump(self, family: int, ifindex: int, what: str, each) -> None:
        self._dump(RTM_GETNEIGH, _NDMSG.pack(family, 0, 0, 0, 0, 0, 0) + _attribute(NDA_IFINDEX, _U32.pack(ifindex)),
                   what, each)

    def permanent_neighbours(self, ifindex: int) -> dict:
        """{ip_address: mac} of the permanent neighbours on the link (IPv4 and IPv6)."""
        found = {}

        def each(data, offset, length, kind):
            family, index, state, attrs = _neighbour(data, offset, length, kind)
            if family not in (AF_INET, AF_INET6) or index != ifindex or not state & NUD_PERMANENT:
                return
            dst = attrs.get(NDA_DST)
            ip = _address(dst) if dst else None
            if ip is not None:
                found[ip] = _mac(attrs.get(NDA_LLADDR, b""))

        self._neighbour_dump(socket.AF_UNSPEC, ifindex, f"list neighbours of link #{ifindex}", each)
        return found

    def fdb(self, ifindex: int) -> dict:
        """{mac: (dst ip_address or None, permanent)} of the link's own FDB entries."""
        found = {}

        def each(data, offset, length, kind):
            family, index, state, attrs = _neighbour(data, offset, length, kind)
            if family != AF_BRIDGE or index != ifindex:
                return
            mac = attrs.get(NDA_LLADDR)
            if mac is None:
                return
            dst = attrs.get(NDA_DST)
            found[_mac(mac)] = (_address(dst) if dst else None, bool(state & NUD_PERMANENT))

        self._neighbour_dump(AF_BRIDGE, ifindex, f"list the FDB of link #{ifindex}", each)
        return found


def open_reader(netns_path: str = None) -> OwnedDump:
    """The reconcile's reader for this namespace (or a test's view of a node's)."""
    return OwnedDump(netns_path)
