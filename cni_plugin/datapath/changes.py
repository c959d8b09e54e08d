"""Has the kernel changed what weft owns?  Netlink change notifications, filtered.

A reconcile that re-reads the kernel every interval pays for a full listing even on a
quiet node.  These sockets join the kernel's multicast change notifications of this
network namespace and are drained without blocking: changed() is True when, since
the last call, a message touched something weft owns, or when the socket overflowed
(ENOBUFS: messages were lost, so assume a change).  Only message headers (and, for
nftables, the table name attribute) are looked at: a few microseconds per message.
Open one before the first full read: a change after it is then never missed.

KernelChanges (rtnetlink): link, neighbour (FDB entries arrive here too, as AF_BRIDGE
neighbour messages) and IPv4/IPv6 route groups; a message counts when it names weft's
device (a link, neighbour or FDB change on its ifindex) or a route of weft's protocol
(added, replaced or deleted, by anyone).  The overlay's reconcile uses it.

TableChanges (nfnetlink): the nftables group; a message counts when it changes one
nftables table (the table, or one of its chains, rules, sets, elements, objects),
whoever made the change, weft included.  The masquerade, source-guard and policy
controllers use it to skip listing their tables when nothing touched them.  Elements
the packet path adds to a dynamic set send no notification: readers of such sets keep
their own schedule.

Notifications only ever save a read: agent/read_schedule.py decides each pass, with
a full read at least every --resync-interval, and an overflowed (ENOBUFS,
NLMSG_OVERRUN) or failed socket counted as a change.
"""

import errno
import socket
import struct

from .constants import WEFT_RTPROT
from .rtnl import socket_in

NETLINK_ROUTE, NETLINK_NETFILTER = 0, 12
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x4, 0x40, 0x400
NFNLGRP_NFTABLES = 7
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NLMSG_OVERRUN = 4
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWGEN = 15                        # a transaction's commit: names no table
NFT_TABLE_ATTRIBUTE = 1                    # NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, ... all 1
NLA_TYPE_MASK = 0x3FFF
# nftables family names (as libnftables' JSON spells them) -> nfgenmsg's nfgen_family
NFT_FAMILIES = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
_HEADER = struct.Struct("=IHHII")         # nlmsghdr: len, type, flags, seq, pid
_ATTR = struct.Struct("=HH")              # nlattr: len, type
_NFGENMSG_SIZE = 4                        # family, version, res_id
_IFINDEX_AT = 4                            # ifinfomsg and ndmsg: family, pads, then ifindex
_RTM_PROTOCOL_AT = 5                       # rtmsg: family, dst_len, src_len, tos, table, protocol
RECEIVE_BUFFER = 4 << 20


class _Notifications:
    """One non-blocking netlink socket joined to `groups`; subclasses judge messages."""

    def __init__(self, protocol: int, groups: int, netns_path: str = None):
        self.sock = socket_in(netns_path, protocol) if netns_path else \
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        try:
            self.sock.setblocking(False)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self.sock.bind((0, groups))
        except OSError:
            self.sock.close()
            raise

    def changed(self) -> bool:
        """Whether anything weft owns changed since the last call (drains the socket)."""
        changed = False
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return changed
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # messages were dropped: cannot tell
                    changed = True
                    continue
                raise
            if not data:
                return changed
            changed = changed or self._any_relevant(data)

    def _any_relevant(self, data: bytes) -> bool:
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind = _HEADER.unpack_from(data, offset)[:2]
            if length < _HEADER.size or kind == NLMSG_OVERRUN:
                return True  # malformed or lost: do not guess
            if self._relevant(data, kind, offset + _HEADER.size, offset + length):
                return True
            offset += (length + 3) & ~3
        return False

    def _relevant(self, data: bytes, kind: int, body: int, end: int) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class KernelChanges(_Notifications):
    def __init__(self, device_index: int = 0, netns_path: str = None):
        super().__init__(NETLINK_ROUTE, RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE,
                         netns_path)
        self.device_index = device_index

    def _relevant(self, data, kind, body, end):
        if kind in (RTM_NEWROUTE, RTM_DELROUTE):
            return end > body + _RTM_PROTOCOL_AT and data[body + _RTM_PROTOCOL_AT] == WEFT_RTPROT
        if kind in (RTM_NEWNEIGH, RTM_DELNEIGH, RTM_NEWLINK, RTM_DELLINK) and end >= body + _IFINDEX_AT + 4:
            index = struct.unpack_from("=i", data, body + _IFINDEX_AT)[0]
            if index == self.device_index and index:
                return True
            # without a device of its own (host-gw) weft's routes hang off the underlay,
            # and IPv4 routes flushed with a link come with no route message: any link
            # change counts
            return not self.device_index and kind in (RTM_NEWLINK, RTM_DELLINK)
        return False


class TableChanges(_Notifications):
    """Changes to the nftables table `family` `name`."""

    def __init__(self, family: str, name: str, netns_path: str = None):
        super().__init__(NETLINK_NETFILTER, 1 << (NFNLGRP_NFTABLES - 1), netns_path)
        self.family = NFT_FAMILIES[family]
        self.name = name.encode()

    def _relevant(self, data, kind, body, end):
        if kind >> 8 != NFNL_SUBSYS_NFTABLES or kind & 0xFF == NFT_MSG_NEWGEN:
            return False
        if end < body + _NFGENMSG_SIZE or data[body] != self.family:
            return False
        offset = body + _NFGENMSG_SIZE
        while offset + _ATTR.size <= end:
            length, kind_of = _ATTR.unpack_from(data, offset)
            if length < _ATTR.size:
                return True  # malformed: do not guess
            if kind_of & NLA_TYPE_MASK == NFT_TABLE_ATTRIBUTE:
                return data[offset + _ATTR.size:offset + length].rstrip(b"\0") == self.name
            offset += (length + 3) & ~3
        return True  # a change naming no table: do not guess
