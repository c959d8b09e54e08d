"""The one netlink codec: every netlink byte weft frames or parses itself (stdlib only).

Raw netlink stays where pyroute2 is too slow or too heavy to load:
  - the per-pod path (rtnl.py): a dozen requests per ADD/DEL in a process that must
    not pay pyroute2's import (~0.2 s, ~20 MB) when it runs standalone;
  - the reconcile's reads of weft's own entries (owned_dump.py), kernel-filtered dumps;
  - the first programming's batched writes (batch.py);
  - change notifications (changes.py), where only headers are looked at;
  - the conntrack flush of a torn-down pod's addresses (conntrack.py): kernel-filtered
    dumps, entries handed back unparsed (pyroute2's client costs ~130 ms a flush).
Everything else (device creation, single writes, the underlay's default route,
WireGuard's generic netlink) goes through pyroute2 in netlink.py and wireguard.py.

This module holds the message header, the attribute layout, the numbers (from the
kernel's uapi headers: linux/netlink.h, rtnetlink.h, if_link.h, if_addr.h,
neighbour.h, nfnetlink.h, nf_tables.h, nfnetlink_conntrack.h), the encoders of the requests those modules
send and the decoders of the answers they read.  Nothing else in the package packs
or unpacks a netlink message (tests/unit/test_layout.py holds that rule).

Decoders trust nothing: a header or attribute that claims more bytes than are there,
a fixed-size value of the wrong size, an address of the wrong length for its family,
a string without its terminating NUL: each raises MalformedMessage, a DatapathError,
instead of yielding an entry made of whatever bytes happened to be there.
tests/unit/test_netlink_codec_fuzz.py feeds them random, truncated and corrupted
input (Hypothesis) and checks exactly that.
"""

import ipaddress
import struct
from collections import namedtuple
from dataclasses import dataclass

from .constants import AF_INET, AF_INET6, IFF_UP, RTNH_F_ONLINK
from .errors import DatapathError

# -- netlink (linux/netlink.h) ---------------------------------------------------------
NETLINK_ROUTE, NETLINK_NETFILTER = 0, 12
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_DUMP = 0x300                         # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4
NLA_TYPE_MASK = 0x3FFF                     # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
NLA_F_NESTED = 0x8000                      # required by parsers that are not "deprecated" (CTA_FILTER's)

# -- rtnetlink (linux/rtnetlink.h and friends) -------------------------------------------
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x4, 0x40, 0x400
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4                       # hairpin
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 9, 15
RTN_UNICAST = 1
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8

# -- nfnetlink / nf_tables -------------------------------------------------------------
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15                        # a transaction's commit: names no table
NFT_TABLE_ATTRIBUTE = 1                    # NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, ... all 1

# -- nfnetlink / ctnetlink (linux/netfilter/nfnetlink_conntrack.h) ------------------------
NFNL_SUBSYS_CTNETLINK = 1
CT_NEW = NFNL_SUBSYS_CTNETLINK << 8 | 0    # IPCTNL_MSG_CT_NEW: what a dump answers
CT_GET = NFNL_SUBSYS_CTNETLINK << 8 | 1
CT_DELETE = NFNL_SUBSYS_CTNETLINK << 8 | 2
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ZONE, CTA_FILTER = 1, 2, 18, 25
CTA_TUPLE_IP = 1
CTA_IP_SRC = {AF_INET: 1, AF_INET6: 3}     # CTA_IP_V4_SRC, CTA_IP_V6_SRC
CTA_IP_DST = {AF_INET: 2, AF_INET6: 4}     # CTA_IP_V4_DST, CTA_IP_V6_DST
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
CTA_FILTER_FLAG_IP_SRC, CTA_FILTER_FLAG_IP_DST = 1 << 0, 1 << 1

# -- layouts -----------------------------------------------------------------------------
HEADER = struct.Struct("=IHHII")           # nlmsghdr: length, type, flags, sequence, port
ATTR = struct.Struct("=HH")                # nlattr: length, type
IFINFOMSG = struct.Struct("=BxHiII")       # family, (pad), type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBi")        # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")        # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")         # family, (pads), ifindex, state, flags, type
NFGENMSG = struct.Struct("=BBH")           # nfgenmsg: family, version, res_id
NFGENMSG_SIZE = NFGENMSG.size
RTNEXTHOP = struct.Struct("=HBBi")         # rtnexthop: length, flags, hops, ifindex
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_U8 = struct.Struct("=B")
_ADDRESS_SIZE = {AF_INET: 4, AF_INET6: 16}


class MalformedMessage(DatapathError):
    """Bytes from a netlink socket that are not the message they claim to be."""


# -- encoding ----------------------------------------------------------------------------
def attr(kind: int, value: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    packed = ATTR.pack(ATTR.size + len(value), kind) + value
    return packed + b"\0" * (-len(packed) % 4)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind, b"".join(attrs))


def u32_attr(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def u8_attr(kind: int, value: int) -> bytes:
    return attr(kind, _U8.pack(value))


def string_attr(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """One netlink message (port 0: the kernel fills in ours)."""
    return HEADER.pack(HEADER.size + len(body), kind, flags, seq, 0) + body


def ifinfomsg(*attrs: bytes, index: int = 0, flags: int = 0, change: int = 0, family: int = 0) -> bytes:
    return IFINFOMSG.pack(family, 0, index, flags, change) + b"".join(attrs)


def ifaddrmsg(*attrs: bytes, family: int = 0, prefixlen: int = 0, flags: int = 0, scope: int = 0,
              index: int = 0) -> bytes:
    return IFADDRMSG.pack(family, prefixlen, flags, scope, index) + b"".join(attrs)


def rtmsg(*attrs: bytes, family: int, dst_len: int = 0, table: int = 0, protocol: int = 0, scope: int = 0,
          type_: int = 0, flags: int = 0) -> bytes:
    return RTMSG.pack(family, dst_len, 0, 0, table, protocol, scope, type_, flags) + b"".join(attrs)


def ndmsg(*attrs: bytes, family: int, ifindex: int = 0, state: int = 0, flags: int = 0) -> bytes:
    return NDMSG.pack(family, ifindex, state, flags, 0) + b"".join(attrs)


def nfgenmsg(*attrs: bytes, family: int) -> bytes:
    """nfgenmsg (family, NFNETLINK_V0, res_id 0) and attributes."""
    return NFGENMSG.pack(family, 0, 0) + b"".join(attrs)


def conntrack_dump(ip, reply: bool, source: bool) -> bytes:
    """The body of a ctnetlink dump of the entries whose original (reply: reply)
    direction has `ip` (an ipaddress object) as source (else destination), filtered by
    the kernel (CTA_FILTER, Linux 5.8)."""
    family = AF_INET if ip.version == 4 else AF_INET6
    end = (CTA_IP_SRC if source else CTA_IP_DST)[family]
    flag = CTA_FILTER_FLAG_IP_SRC if source else CTA_FILTER_FLAG_IP_DST
    tuple_ = nested((CTA_TUPLE_REPLY if reply else CTA_TUPLE_ORIG) | NLA_F_NESTED,
                    nested(CTA_TUPLE_IP | NLA_F_NESTED, attr(end, ip.packed)))
    return nfgenmsg(tuple_, nested(CTA_FILTER | NLA_F_NESTED,
                                   u32_attr(CTA_FILTER_REPLY_FLAGS if reply else CTA_FILTER_ORIG_FLAGS, flag)),
                    family=family)


def conntrack_delete(family: int, entry: tuple) -> bytes:
    """The body deleting one entry: its original tuple and zone as a dump gave them
    (decode_conntrack), handed back unchanged."""
    tuple_orig, zone = entry
    return nfgenmsg(attr(CTA_TUPLE_ORIG | NLA_F_NESTED, tuple_orig), *([attr(CTA_ZONE, zone)] if zone is not None else []),
                    family=family)


# -- decoding: framing -------------------------------------------------------------------
def messages(data):
    """(offset, length, type, flags, sequence) of each message in one datagram."""
    at, end = 0, len(data)
    while at < end:
        if end - at < HEADER.size:
            raise MalformedMessage(f"netlink: {end - at} bytes left at {at}, less than a header")
        length, kind, flags, seq, _ = HEADER.unpack_from(data, at)
        if length < HEADER.size or length > end - at:
            raise MalformedMessage(f"netlink: a message at {at} claims {length} bytes of {end - at}")
        yield at, length, kind, flags, seq
        at += (length + 3) & ~3


def attributes(data, start: int, end: int, wanted=None) -> dict:
    """{type: value bytes} of the attributes in data[start:end] (only `wanted` types)."""
    found = {}
    if end > len(data):
        raise MalformedMessage(f"netlink: attributes end at {end}, past the {len(data)} bytes read")
    unpack = ATTR.unpack_from
    while start < end:
        if end - start < 4:
            raise MalformedMessage(f"netlink: {end - start} bytes left at {start}, less than an attribute")
        length, kind = unpack(data, start)
        if length < 4 or length > end - start:
            raise MalformedMessage(f"netlink: an attribute at {start} claims {length} bytes of {end - start}")
        kind &= NLA_TYPE_MASK
        if wanted is None or kind in wanted:
            found[kind] = bytes(data[start + 4:start + length])
        start += (length + 3) & ~3
    return found


def body(data, offset: int, length: int, layout: struct.Struct) -> tuple:
    """The fixed part after the header, unpacked; MalformedMessage when it is cut short
    (or when the length given runs past the bytes read)."""
    if offset < 0 or length < HEADER.size + layout.size or offset + length > len(data):
        raise MalformedMessage(f"netlink: a {length}-byte message at {offset} of {len(data)} bytes read "
                               f"has no room for its {layout.size}-byte body")
    return layout.unpack_from(data, offset + HEADER.size)


def error_code(data, offset: int, length: int) -> int:
    """The errno of an NLMSG_ERROR (0: an acknowledgement)."""
    return -body(data, offset, length, _I32)[0]


def u32(raw: bytes, what: str) -> int:
    if len(raw) != 4:
        raise MalformedMessage(f"netlink: {what} of {len(raw)} bytes, expected 4")
    return _U32.unpack(raw)[0]


def ip_address(raw: bytes, family: int = None, what: str = "address"):
    """An ipaddress object of 4 or 16 bytes (exactly the family's size, if given)."""
    if (family is not None and len(raw) != _ADDRESS_SIZE.get(family)) or len(raw) not in (4, 16):
        raise MalformedMessage(f"netlink: {what} of {len(raw)} bytes (family {family})")
    return ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)


def string(raw: bytes, what: str) -> str:
    """A NUL-terminated string attribute (bytes that are not UTF-8 kept as surrogates)."""
    if not raw.endswith(b"\0") or b"\0" in raw[:-1]:
        raise MalformedMessage(f"netlink: {what} is not one NUL-terminated string")
    return raw[:-1].decode("utf-8", "surrogateescape")


def mac(raw: bytes) -> str:
    return raw.hex(":")


# -- decoding: the entries weft reads --------------------------------------------------------
@dataclass
class Link:
    index: int
    name: str
    kind: str
    mtu: int
    up: bool
    master: int | None
    address: str


# plain namedtuples: typing's NamedTuple would cost the per-pod path typing's import
RouteEntry = namedtuple("RouteEntry", "dst gateway oif onlink")  # network; address, int or None; bool
RouteEntry.__doc__ = "A route's destination, gateway (None: none), output link (None: none) and onlink flag."
Route = namedtuple("Route", "family table protocol entry")
Route.__doc__ = "An RTM_NEWROUTE read for what weft compares (table: RTA_TABLE when present; entry: RouteEntry)."
Neighbour = namedtuple("Neighbour", "family ifindex state dst lladdr")
Neighbour.__doc__ = "An RTM_NEWNEIGH (neighbour or FDB entry); dst/lladdr None when absent."


_LINK_ATTRS = (IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO)
_ROUTE_ATTRS = (RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE)
_NEIGH_ATTRS = (NDA_DST, NDA_LLADDR)
_NETWORK = {AF_INET: ipaddress.IPv4Network, AF_INET6: ipaddress.IPv6Network}


def decode_link(data, offset: int, length: int) -> Link:
    """An RTM_NEWLINK: the five attributes weft uses (pyroute2 decodes every one,
    statistics included: ~0.3 ms per link)."""
    _, _, index, flags, _ = body(data, offset, length, IFINFOMSG)
    attrs = attributes(data, offset + HEADER.size + IFINFOMSG.size, offset + length, _LINK_ATTRS)
    info = attrs.get(IFLA_LINKINFO)
    kind = attributes(info, 0, len(info), (IFLA_INFO_KIND,)).get(IFLA_INFO_KIND) if info else None
    master = attrs.get(IFLA_MASTER)
    name = attrs.get(IFLA_IFNAME)
    return Link(index=index, name=string(name, "IFLA_IFNAME") if name is not None else "",
                kind=string(kind, "IFLA_INFO_KIND") if kind is not None else "",
                mtu=u32(attrs[IFLA_MTU], "IFLA_MTU") if IFLA_MTU in attrs else 0, up=bool(flags & IFF_UP),
                master=u32(master, "IFLA_MASTER") if master is not None else None,
                address=mac(attrs.get(IFLA_ADDRESS, b"")))


def decode_address(data, offset: int, length: int) -> tuple:
    """(ifindex, scope, ip_interface or None) of an RTM_NEWADDR (None: no IFA_ADDRESS)."""
    family, prefixlen, _, scope, index = body(data, offset, length, IFADDRMSG)
    raw = attributes(data, offset + HEADER.size + IFADDRMSG.size, offset + length, (IFA_ADDRESS,)).get(IFA_ADDRESS)
    if raw is None:
        return index, scope, None
    ip = ip_address(raw, family, "IFA_ADDRESS")
    if prefixlen > ip.max_prefixlen:
        raise MalformedMessage(f"netlink: prefix length {prefixlen} for {ip}")
    return index, scope, ipaddress.ip_interface((ip, prefixlen))


def decode_route(data, offset: int, length: int) -> Route:
    """An RTM_NEWROUTE as weft compares it (oif: RTA_OIF, else the first nexthop's)."""
    family, dst_len, _, _, table, protocol, _, _, flags = body(data, offset, length, RTMSG)
    network = _NETWORK.get(family)
    if network is None:
        raise MalformedMessage(f"netlink: a route of family {family}")
    attrs = attributes(data, offset + HEADER.size + RTMSG.size, offset + length, _ROUTE_ATTRS)
    if RTA_TABLE in attrs:
        table = u32(attrs[RTA_TABLE], "RTA_TABLE")
    dst, gateway, oif = attrs.get(RTA_DST), attrs.get(RTA_GATEWAY), attrs.get(RTA_OIF)
    if oif is not None:
        oif = u32(oif, "RTA_OIF")
    elif RTA_MULTIPATH in attrs:
        hops = attrs[RTA_MULTIPATH]
        if len(hops) < RTNEXTHOP.size:
            raise MalformedMessage(f"netlink: RTA_MULTIPATH of {len(hops)} bytes")
        oif = RTNEXTHOP.unpack_from(hops, 0)[3]  # the first nexthop's
    if dst is not None and len(dst) != _ADDRESS_SIZE[family]:
        raise MalformedMessage(f"netlink: RTA_DST of {len(dst)} bytes (family {family})")
    try:  # from an int: from an address object, ipaddress goes through its string
        dst = network((int.from_bytes(dst, "big") if dst is not None else 0, dst_len))
    except ValueError as exc:  # a prefix length too long, host bits set
        raise MalformedMessage(f"netlink: route destination: {exc}") from None
    return Route(family, table, protocol,
                 RouteEntry(dst, ip_address(gateway, family, "RTA_GATEWAY") if gateway is not None else None,
                            oif, bool(flags & RTNH_F_ONLINK)))


def decode_neighbour(data, offset: int, length: int) -> Neighbour:
    """An RTM_NEWNEIGH; NDA_DST of an FDB entry (AF_BRIDGE) may be either family."""
    family, ifindex, state, _, _ = body(data, offset, length, NDMSG)
    attrs = attributes(data, offset + HEADER.size + NDMSG.size, offset + length, _NEIGH_ATTRS)
    dst, lladdr = attrs.get(NDA_DST), attrs.get(NDA_LLADDR)
    return Neighbour(family, ifindex, state,
                     ip_address(dst, family if family in _ADDRESS_SIZE else None, "NDA_DST")
                     if dst is not None else None,
                     mac(lladdr) if lladdr is not None else None)



def decode_conntrack(data, offset: int, length: int) -> tuple:
    """(family, (CTA_TUPLE_ORIG bytes, CTA_ZONE bytes or None)) of a ctnetlink entry:
    what conntrack_delete hands back to the kernel, which parses it itself."""
    family, _, _ = body(data, offset, length, NFGENMSG)
    attrs = attributes(data, offset + HEADER.size + NFGENMSG.size, offset + length, (CTA_TUPLE_ORIG, CTA_ZONE))
    if CTA_TUPLE_ORIG not in attrs:
        raise MalformedMessage("netlink: a conntrack entry without CTA_TUPLE_ORIG")
    tuple_orig = attrs[CTA_TUPLE_ORIG]
    attributes(tuple_orig, 0, len(tuple_orig))  # well-formed within its bounds
    zone = attrs.get(CTA_ZONE)
    if zone is not None and len(zone) != 2:
        raise MalformedMessage(f"netlink: CTA_ZONE of {len(zone)} bytes, expected 2")
    return family, (tuple_orig, zone)
