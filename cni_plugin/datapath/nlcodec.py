"""The one netlink codec: every netlink byte weft frames or parses itself (stdlib only).

Raw netlink stays where pyroute2 is too slow or too heavy to load:
  - the per-pod path (rtnl.py): a dozen requests per ADD/DEL in a process that must
    not pay pyroute2's import (~0.2 s, ~20 MB) when it runs standalone;
  - the reconcile's reads of weft's own entries (owned_dump.py), kernel-filtered dumps;
  - the first programming's batched writes (batch.py);
  - change notifications (changes.py), where only headers are looked at;
  - conntrack events and dumps (conntrack.py, flow records): one connection every few
    microseconds at the benchmarked rates, where pyroute2 spends ~0.3 ms per message.
    The teardown of a DEL flushes a released pod's entries with the same codec:
    kernel-filtered dumps, each entry deleted by the original tuple the dump gave.
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
RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x10, 0x100
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4                       # hairpin
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 9, 15
RTA_VIA = 18  # struct rtvia: a gateway of the other family (an IPv4 route via an IPv6 next hop)
RTN_UNICAST = 1
NDA_DST, NDA_LLADDR, NDA_IFINDEX = 1, 2, 8

# -- nfnetlink / nf_tables -------------------------------------------------------------
NFNLGRP_NFTABLES = 7
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15                        # a transaction's commit: names no table
NFT_TABLE_ATTRIBUTE = 1                    # NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, ... all 1

# -- nfnetlink / ctnetlink (linux/netfilter/nfnetlink_conntrack.h) -----------------------
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_MARK = 1, 2, 3, 4, 8
CTA_FILTER = 25                            # Linux 5.8: kernel-side filter of a dump
CTA_FILTER_ORIG_FLAGS, CTA_FILTER_REPLY_FLAGS = 1, 2
CTA_FILTER_FLAG_IP_SRC, CTA_FILTER_FLAG_IP_DST = 1 << 0, 1 << 1
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
TCP_CONNTRACK_TIME_WAIT, TCP_CONNTRACK_CLOSE = 7, 8   # linux/netfilter/nf_conntrack_tcp.h
CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ID, CTA_ZONE, CTA_TIMESTAMP, CTA_MARK_MASK = 9, 10, 12, 18, 20, 21
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 4, 5, 6
CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE = 7, 8, 9
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2     # be64
CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP = 1, 2      # be64 nanoseconds, CLOCK_REALTIME

# -- layouts -----------------------------------------------------------------------------
HEADER = struct.Struct("=IHHII")           # nlmsghdr: length, type, flags, sequence, port
ATTR = struct.Struct("=HH")                # nlattr: length, type
IFINFOMSG = struct.Struct("=BxHiII")       # family, (pad), type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBi")        # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")        # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")         # family, (pads), ifindex, state, flags, type
NFGENMSG = struct.Struct("=BBH")           # nfgenmsg: family, version, res_id
NFGENMSG_SIZE = NFGENMSG.size
RTVIA_FAMILY = struct.Struct("=H")         # rtvia: family, then the address
RTNEXTHOP = struct.Struct("=HBBi")         # rtnexthop: length, flags, hops, ifindex
_U32 = struct.Struct("=I")
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_I32 = struct.Struct("=i")
_U8 = struct.Struct("=B")
_ADDRESS_SIZE = {AF_INET: 4, AF_INET6: 16}
_FAMILY_OF = {4: AF_INET, 6: AF_INET6}


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
# plain namedtuples: dataclasses (inspect) and typing's NamedTuple would cost the
# per-pod path their imports
Link = namedtuple("Link", "index name kind mtu up master address")
Link.__doc__ = "An RTM_NEWLINK as weft reads it (master: the bridge's index or None; address: the MAC)."
RouteEntry = namedtuple("RouteEntry", "dst gateway oif onlink")  # network; address, int or None; bool
RouteEntry.__doc__ = "A route's destination, gateway (None: none), output link (None: none) and onlink flag."
Route = namedtuple("Route", "family table protocol entry")
Route.__doc__ = "An RTM_NEWROUTE read for what weft compares (table: RTA_TABLE when present; entry: RouteEntry)."
Neighbour = namedtuple("Neighbour", "family ifindex state dst lladdr")
Neighbour.__doc__ = "An RTM_NEWNEIGH (neighbour or FDB entry); dst/lladdr None when absent."


_LINK_ATTRS = (IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO)
_ROUTE_ATTRS = (RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE, RTA_VIA)
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
    if gateway is not None:
        gateway = ip_address(gateway, family, "RTA_GATEWAY")
    elif RTA_VIA in attrs:
        gateway = decode_via(attrs[RTA_VIA])
    return Route(family, table, protocol, RouteEntry(dst, gateway, oif, bool(flags & RTNH_F_ONLINK)))


def decode_via(raw: bytes):
    """RTA_VIA's address (struct rtvia: family, address of that family)."""
    if len(raw) < RTVIA_FAMILY.size:
        raise MalformedMessage(f"netlink: RTA_VIA of {len(raw)} bytes")
    family = RTVIA_FAMILY.unpack_from(raw, 0)[0]
    if family not in _ADDRESS_SIZE:
        raise MalformedMessage(f"netlink: RTA_VIA of family {family}")
    return ip_address(bytes(raw[RTVIA_FAMILY.size:]), family, "RTA_VIA")


def via(gateway) -> bytes:
    """RTA_VIA for a gateway of the other family than the route's."""
    return attr(RTA_VIA, RTVIA_FAMILY.pack(_FAMILY_OF[gateway.version]) + gateway.packed)


def decode_neighbour(data, offset: int, length: int) -> Neighbour:
    """An RTM_NEWNEIGH; NDA_DST of an FDB entry (AF_BRIDGE) may be either family."""
    family, ifindex, state, _, _ = body(data, offset, length, NDMSG)
    attrs = attributes(data, offset + HEADER.size + NDMSG.size, offset + length, _NEIGH_ATTRS)
    dst, lladdr = attrs.get(NDA_DST), attrs.get(NDA_LLADDR)
    return Neighbour(family, ifindex, state,
                     ip_address(dst, family if family in _ADDRESS_SIZE else None, "NDA_DST")
                     if dst is not None else None,
                     mac(lladdr) if lladdr is not None else None)


# -- ctnetlink: connection tracking events and dumps -------------------------------------
Tuple = namedtuple("Tuple", "src dst proto sport dport")
Tuple.__doc__ = ("One direction of a tracked connection (ports 0 for protocols without them; for ICMP "
                 "the id stands in sport, type/code in dport as type << 8 | code).")


# event: "new", "update", "destroy" (a dump's entries: "update"); reply: Tuple or None;
# *_counters: (packets, bytes) or None; start_ns/stop_ns: int or None; tcp_state:
# CTA_PROTOINFO_TCP_STATE when the message carries it (plain namedtuples: typing's
# NamedTuple would cost the per-pod path typing's import)
Conntrack = namedtuple("Conntrack", "event family id orig reply mark zone orig_counters reply_counters "
                       "start_ns stop_ns tcp_state", defaults=(None,))
Conntrack.__doc__ = ("A conntrack event or dump entry as flow records use it (counters and times None when "
                     "nf_conntrack_acct / nf_conntrack_timestamp were off when it was created).")


def ctnetlink_type(msg: int) -> int:
    return (NFNL_SUBSYS_CTNETLINK << 8) | msg


def nfgenmsg(family: int, res_id: int = 0) -> bytes:
    """The nfnetlink fixed header: family, version 0, resource id (big-endian)."""
    return bytes((family, 0)) + _BE16.pack(res_id)


def conntrack_dump_request(seq: int, mark: int = 0, mask: int = 0, family: int = 0) -> bytes:
    """A dump of the conntrack table (family 0: every family), kernel-filtered to
    entries with (ct mark & mask) == mark when mask is not 0."""
    attrs = attr(CTA_MARK, _BE32.pack(mark)) + attr(CTA_MARK_MASK, _BE32.pack(mask)) if mask else b""
    return message(ctnetlink_type(IPCTNL_MSG_CT_GET), NLM_F_REQUEST | NLM_F_DUMP, seq,
                   nfgenmsg(family) + attrs)


def _be(raw: bytes, layout: struct.Struct, what: str) -> int:
    if len(raw) != layout.size:
        raise MalformedMessage(f"ctnetlink: {what} of {len(raw)} bytes, expected {layout.size}")
    return layout.unpack(raw)[0]


_IP_ATTRS = {4: (CTA_IP_V4_SRC, CTA_IP_V4_DST), 6: (CTA_IP_V6_SRC, CTA_IP_V6_DST)}
_ICMP = {1: (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE),
         58: (CTA_PROTO_ICMPV6_ID, CTA_PROTO_ICMPV6_TYPE, CTA_PROTO_ICMPV6_CODE)}


# The layout the kernel gives a TCP, UDP, SCTP, DCCP or UDP-Lite tuple of IPv4 (48 bytes)
# or IPv6 (72 bytes): CTA_TUPLE_IP {src, dst}, CTA_TUPLE_PROTO {number, source port,
# destination port}.  A tuple of exactly that size whose every attribute header is the
# expected one is read with one unpack; anything else takes the general path.
_PORTED_TUPLE = {size: struct.Struct(f"=HH HH{size}s HH{size}s HH HHB3x HH2s2x HH2s2x")
                 for size in (4, 16)}
_PORTED_HEADERS = {size: (4 + 2 * (4 + size), CTA_TUPLE_IP, 4 + size, _IP_ATTRS[version][0], 4 + size,
                          _IP_ATTRS[version][1], 28, CTA_TUPLE_PROTO, 5, CTA_PROTO_NUM, 6, CTA_PROTO_SRC_PORT,
                          6, CTA_PROTO_DST_PORT)
                   for version, size in ((4, 4), (6, 16))}
_PORTED_LENGTHS = {_PORTED_TUPLE[size].size: size for size in (4, 16)}
_ADDRESS_CACHE = {}  # raw address bytes -> address object (a node sees the same few addresses)
_ADDRESS_CACHE_SIZE = 4096


def _remembered(base):
    """`base` (IPv4Address, IPv6Address) with its text and hash worked out once: ipaddress
    computes both in Python on every call, and a flow record asks for each several times."""
    class Remembered(base):
        __slots__ = ("_text", "_hashed")

        def __init__(self, raw):
            super().__init__(raw)
            self._text, self._hashed = base.__str__(self), base.__hash__(self)

        def __str__(self):
            return self._text

        def __hash__(self):
            return self._hashed

    Remembered.__name__ = Remembered.__qualname__ = base.__name__
    return Remembered


_IPv4, _IPv6 = _remembered(ipaddress.IPv4Address), _remembered(ipaddress.IPv6Address)


def _cached_address(raw: bytes):
    found = _ADDRESS_CACHE.get(raw)
    if found is None:
        if len(_ADDRESS_CACHE) >= _ADDRESS_CACHE_SIZE:
            _ADDRESS_CACHE.clear()
        found = _ADDRESS_CACHE[raw] = _IPv4(raw) if len(raw) == 4 else _IPv6(raw)
    return found


def _ported_tuple(raw: bytes, family: int):
    """The tuple read in one unpack when it has the kernel's usual layout, else None."""
    size = _PORTED_LENGTHS.get(len(raw))
    if size is None or _ADDRESS_SIZE.get(family) != size:
        return None
    (ip_len, ip_kind, src_len, src_kind, src, dst_len, dst_kind, dst, proto_len, proto_kind, num_len, num_kind,
     proto, sport_len, sport_kind, sport, dport_len, dport_kind, dport) = _PORTED_TUPLE[size].unpack(raw)
    if (ip_len, ip_kind & NLA_TYPE_MASK, src_len, src_kind & NLA_TYPE_MASK, dst_len, dst_kind & NLA_TYPE_MASK,
            proto_len, proto_kind & NLA_TYPE_MASK, num_len, num_kind & NLA_TYPE_MASK, sport_len,
            sport_kind & NLA_TYPE_MASK, dport_len, dport_kind & NLA_TYPE_MASK) != _PORTED_HEADERS[size] \
            or proto in _ICMP:
        return None
    return Tuple(_cached_address(src), _cached_address(dst), proto, int.from_bytes(sport, "big"),
                 int.from_bytes(dport, "big"))


def _tuple(raw: bytes, family: int, what: str) -> Tuple:
    fast = _ported_tuple(raw, family)
    return fast if fast is not None else _tuple_read(raw, family, what)


def _tuple_read(raw: bytes, family: int, what: str) -> Tuple:
    """A tuple of any layout (foreign attributes skipped, ICMP's fields)."""
    parts = attributes(raw, 0, len(raw), (CTA_TUPLE_IP, CTA_TUPLE_PROTO))
    if CTA_TUPLE_IP not in parts or CTA_TUPLE_PROTO not in parts:
        raise MalformedMessage(f"ctnetlink: {what} without its addresses or protocol")
    ip = parts[CTA_TUPLE_IP]
    addresses = attributes(ip, 0, len(ip))
    version = 4 if family == AF_INET else 6 if family == AF_INET6 else None
    if version is None:
        raise MalformedMessage(f"ctnetlink: {what} of family {family}")
    src_kind, dst_kind = _IP_ATTRS[version]
    if src_kind not in addresses or dst_kind not in addresses:
        raise MalformedMessage(f"ctnetlink: {what} without IPv{version} addresses")
    src = ip_address(addresses[src_kind], family, f"{what} source")
    dst = ip_address(addresses[dst_kind], family, f"{what} destination")
    proto_raw = parts[CTA_TUPLE_PROTO]
    proto_attrs = attributes(proto_raw, 0, len(proto_raw))
    if CTA_PROTO_NUM not in proto_attrs:
        raise MalformedMessage(f"ctnetlink: {what} without a protocol number")
    proto = _be(proto_attrs[CTA_PROTO_NUM], _U8, f"{what} protocol")
    if proto in _ICMP:
        ident, kind, code = _ICMP[proto]
        sport = _be(proto_attrs[ident], _BE16, f"{what} icmp id") if ident in proto_attrs else 0
        dport = ((_be(proto_attrs[kind], _U8, f"{what} icmp type") if kind in proto_attrs else 0) << 8) | \
            (_be(proto_attrs[code], _U8, f"{what} icmp code") if code in proto_attrs else 0)
    else:
        sport = _be(proto_attrs[CTA_PROTO_SRC_PORT], _BE16, f"{what} source port") \
            if CTA_PROTO_SRC_PORT in proto_attrs else 0
        dport = _be(proto_attrs[CTA_PROTO_DST_PORT], _BE16, f"{what} destination port") \
            if CTA_PROTO_DST_PORT in proto_attrs else 0
    return Tuple(src, dst, proto, sport, dport)


# two be64 attributes (counters: packets, bytes; times: start, stop) as the kernel puts
# them, read in one unpack; any other layout takes the general path
_TWO_BE64 = struct.Struct("=HH8sHH8s")


def _two_be64(raw: bytes):
    """(first, second) of a nest holding exactly attributes 1 and 2, 8 bytes each, else None."""
    if len(raw) != _TWO_BE64.size:
        return None
    first_len, first_kind, first, second_len, second_kind, second = _TWO_BE64.unpack(raw)
    if (first_len, first_kind & NLA_TYPE_MASK, second_len, second_kind & NLA_TYPE_MASK) != (12, 1, 12, 2):
        return None
    return int.from_bytes(first, "big"), int.from_bytes(second, "big")


def _counters(raw: bytes | None, what: str) -> tuple | None:
    if raw is None:
        return None
    fast = _two_be64(raw)
    if fast is not None:
        return fast
    found = attributes(raw, 0, len(raw), (CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES))
    return (_be(found[CTA_COUNTERS_PACKETS], _BE64, f"{what} packets") if CTA_COUNTERS_PACKETS in found else 0,
            _be(found[CTA_COUNTERS_BYTES], _BE64, f"{what} bytes") if CTA_COUNTERS_BYTES in found else 0)


_CT_ATTRS = frozenset((CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ID,
                       CTA_ZONE, CTA_TIMESTAMP, CTA_PROTOINFO))


_TCP_STATE_FIRST = struct.Struct("=HHHHB")  # CTA_PROTOINFO_TCP {CTA_PROTOINFO_TCP_STATE first}


def _tcp_state(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    if len(raw) >= _TCP_STATE_FIRST.size:  # the kernel's layout: the state first, read at once
        tcp_len, tcp_kind, state_len, state_kind, state = _TCP_STATE_FIRST.unpack_from(raw)
        if tcp_len == len(raw) and tcp_kind & NLA_TYPE_MASK == CTA_PROTOINFO_TCP and state_len == 5 and \
                state_kind & NLA_TYPE_MASK == CTA_PROTOINFO_TCP_STATE:
            return state
    tcp = attributes(raw, 0, len(raw), (CTA_PROTOINFO_TCP,)).get(CTA_PROTOINFO_TCP)
    if tcp is None:
        return None
    state = attributes(tcp, 0, len(tcp), (CTA_PROTOINFO_TCP_STATE,)).get(CTA_PROTOINFO_TCP_STATE)
    return _be(state, _U8, "TCP state") if state is not None else None


# tuple_orig: the CTA_TUPLE_ORIG attribute's payload; zone: CTA_ZONE's payload or None
Close = namedtuple("Close", "id family tuple_orig zone")
Close.__doc__ = ("A dumped entry kept as the bytes a delete of it needs (no decode): the request names the "
                 "entry by these very attributes.")


def _ct_id(raw: dict) -> int:
    """CTA_ID of a conntrack message's attributes (0 without one)."""
    return _be(raw[CTA_ID], _BE32, "CTA_ID") if CTA_ID in raw else 0


def _ct_attributes(data, offset: int, length: int, wanted) -> tuple:
    """(family, {attribute: payload} of `wanted`) of a conntrack message."""
    family, _, _ = body(data, offset, length, NFGENMSG)
    return family, attributes(data, offset + HEADER.size + NFGENMSG.size, offset + length, wanted)


def conntrack_close(data, offset: int, length: int) -> Close:
    """The Close of a conntrack message: its id, original tuple (unparsed) and zone."""
    family, raw = _ct_attributes(data, offset, length, _CLOSE_ATTRS)
    if CTA_TUPLE_ORIG not in raw:
        raise MalformedMessage("ctnetlink: an entry without its original tuple")
    return Close(_ct_id(raw), family, raw[CTA_TUPLE_ORIG], raw.get(CTA_ZONE))


_CLOSE_ATTRS = frozenset((CTA_ID, CTA_TUPLE_ORIG, CTA_ZONE))


def conntrack_brief(data, offset: int, length: int) -> tuple:
    """(CTA_ID, TCP state or None) of a conntrack message, without decoding the rest:
    enough to decide whether the whole message is worth decoding."""
    raw = _ct_attributes(data, offset, length, (CTA_ID, CTA_PROTOINFO))[1]
    return _ct_id(raw), _tcp_state(raw.get(CTA_PROTOINFO))


def conntrack_delete(entry: Close) -> bytes:
    """The body of an IPCTNL_MSG_CT_DELETE of one entry, named by the original tuple (and
    zone) a dump gave (conntrack_close)."""
    zone = attr(CTA_ZONE, entry.zone) if entry.zone is not None else b""
    return nfgenmsg(entry.family) + attr(CTA_TUPLE_ORIG | NLA_F_NESTED, entry.tuple_orig) + zone


def conntrack_address_dump(ip, reply: bool, source: bool) -> bytes:
    """The body of a ctnetlink dump of the entries whose original (reply: reply)
    direction has `ip` (an ipaddress object) as source (else destination), filtered by
    the kernel (CTA_FILTER, Linux 5.8)."""
    family = AF_INET if ip.version == 4 else AF_INET6
    end = _IP_ATTRS[ip.version][0 if source else 1]
    flag = CTA_FILTER_FLAG_IP_SRC if source else CTA_FILTER_FLAG_IP_DST
    tuple_ = nested((CTA_TUPLE_REPLY if reply else CTA_TUPLE_ORIG) | NLA_F_NESTED,
                    nested(CTA_TUPLE_IP | NLA_F_NESTED, attr(end, ip.packed)))
    return nfgenmsg(family) + tuple_ + nested(CTA_FILTER | NLA_F_NESTED,
                                              u32_attr(CTA_FILTER_REPLY_FLAGS if reply else CTA_FILTER_ORIG_FLAGS, flag))


def conntrack_entry(data, offset: int, length: int) -> tuple:
    """(Close, Conntrack) of a dumped entry: the bytes a delete hands back, and the
    parsed tuples that say whose entry it is."""
    _, kind, flags, _, _ = HEADER.unpack_from(data, offset)
    return conntrack_close(data, offset, length), decode_conntrack(data, offset, length, kind, flags)


def decode_conntrack(data, offset: int, length: int, kind: int, flags: int, event: str = None) -> Conntrack:
    """An IPCTNL_MSG_CT_NEW (event "new" when NLM_F_CREATE, else "update") or
    IPCTNL_MSG_CT_DELETE ("destroy") message; `event` given: that event instead (a
    dump's entry)."""
    family, _, _ = body(data, offset, length, NFGENMSG)
    msg = kind & 0xFF
    if kind >> 8 != NFNL_SUBSYS_CTNETLINK or msg not in (IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_DELETE):
        raise MalformedMessage(f"ctnetlink: message type {kind:#x} is not a conntrack entry")
    attrs = attributes(data, offset + HEADER.size + NFGENMSG.size, offset + length, _CT_ATTRS)
    if CTA_TUPLE_ORIG not in attrs:
        raise MalformedMessage("ctnetlink: an entry without its original tuple")
    reply = attrs.get(CTA_TUPLE_REPLY)
    start = stop = None
    both = _two_be64(attrs[CTA_TIMESTAMP]) if CTA_TIMESTAMP in attrs else None
    if both is not None:
        start, stop = both
    elif CTA_TIMESTAMP in attrs:
        times = attributes(attrs[CTA_TIMESTAMP], 0, len(attrs[CTA_TIMESTAMP]),
                           (CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP))
        if CTA_TIMESTAMP_START in times:
            start = _be(times[CTA_TIMESTAMP_START], _BE64, "timestamp start")
        if CTA_TIMESTAMP_STOP in times:
            stop = _be(times[CTA_TIMESTAMP_STOP], _BE64, "timestamp stop")
    if event is None:
        event = "destroy" if msg == IPCTNL_MSG_CT_DELETE else "new" if flags & NLM_F_CREATE else "update"
    return Conntrack(
        event=event, family=family,
        id=_ct_id(attrs),
        orig=_tuple(attrs[CTA_TUPLE_ORIG], family, "original tuple"),
        reply=_tuple(reply, family, "reply tuple") if reply is not None else None,
        mark=_be(attrs[CTA_MARK], _BE32, "CTA_MARK") if CTA_MARK in attrs else 0,
        zone=_be(attrs[CTA_ZONE], _BE16, "CTA_ZONE") if CTA_ZONE in attrs else 0,
        orig_counters=_counters(attrs.get(CTA_COUNTERS_ORIG), "original counters"),
        reply_counters=_counters(attrs.get(CTA_COUNTERS_REPLY), "reply counters"),
        start_ns=start, stop_ns=stop, tcp_state=_tcp_state(attrs.get(CTA_PROTOINFO)))
