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

LinkChanges (rtnetlink): link and IPv4/IPv6 address groups; a message counts when it
names one of the watched ifindexes: the link went, got or lost an address, or its
RTM_NEWLINK differs from the Link watched in what nlcodec.Link holds (name, kind,
MTU, up, master, MAC; a carrier change, as a bridge's first port brings, is not a
change of these).
The agent's bridge facts (datapath/bridge_facts.py) use it: drained before each use,
it tells whether a bridge an ADD found in place may have changed since.

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

from . import nlcodec as nl
from .constants import WEFT_RTPROT
from .rtnl import socket_in

# nftables family names (as libnftables' JSON spells them) -> nfgenmsg's nfgen_family
NFT_FAMILIES = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
RECEIVE_BUFFER = 4 << 20
# messages that name an ifindex: (layout, position of the ifindex in it)
_INDEXED = {nl.RTM_NEWLINK: (nl.IFINFOMSG, 2), nl.RTM_DELLINK: (nl.IFINFOMSG, 2),
            nl.RTM_NEWNEIGH: (nl.NDMSG, 1), nl.RTM_DELNEIGH: (nl.NDMSG, 1)}
_LINK_OR_ADDRESS = {nl.RTM_NEWLINK: (nl.IFINFOMSG, 2), nl.RTM_DELLINK: (nl.IFINFOMSG, 2),
                    nl.RTM_NEWADDR: (nl.IFADDRMSG, 4), nl.RTM_DELADDR: (nl.IFADDRMSG, 4)}


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
        try:
            for offset, length, kind, _, _ in nl.messages(data):
                if kind == nl.NLMSG_OVERRUN:
                    return True  # lost: do not guess
                if self._relevant(data, kind, offset + nl.HEADER.size, offset + length):
                    return True
        except nl.MalformedMessage:
            return True  # malformed: do not guess
        return False

    def _relevant(self, data: bytes, kind: int, body: int, end: int) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class KernelChanges(_Notifications):
    def __init__(self, device_index=0, netns_path: str = None):
        """device_index: the backend's device's ifindex, or a tuple of them (VXLAN over both
        underlay families has two); 0 or (): no device."""
        super().__init__(nl.NETLINK_ROUTE,
                         nl.RTMGRP_LINK | nl.RTMGRP_NEIGH | nl.RTMGRP_IPV4_ROUTE | nl.RTMGRP_IPV6_ROUTE, netns_path)
        indexes = device_index if isinstance(device_index, tuple) else (device_index,)
        self.device_indexes = frozenset(i for i in indexes if i)

    def _relevant(self, data, kind, body, end):
        if kind in (nl.RTM_NEWROUTE, nl.RTM_DELROUTE):
            return end >= body + nl.RTMSG.size and nl.RTMSG.unpack_from(data, body)[5] == WEFT_RTPROT  # protocol
        layout, at = _INDEXED.get(kind, (None, 0))
        if layout is not None and end >= body + layout.size:
            index = layout.unpack_from(data, body)[at]
            if index in self.device_indexes:
                return True
            # without a device of its own (host-gw) weft's routes hang off the underlay,
            # and IPv4 routes flushed with a link come with no route message: any link
            # change counts
            return not self.device_indexes and kind in (nl.RTM_NEWLINK, nl.RTM_DELLINK)
        return False


class TableChanges(_Notifications):
    """Changes to the nftables table `family` `name`."""

    def __init__(self, family: str, name: str, netns_path: str = None):
        super().__init__(nl.NETLINK_NETFILTER, 1 << (nl.NFNLGRP_NFTABLES - 1), netns_path)
        self.family = NFT_FAMILIES[family]
        self.name = name.encode()

    def _relevant(self, data, kind, body, end):
        if kind >> 8 != nl.NFNL_SUBSYS_NFTABLES or kind & 0xFF == nl.NFT_MSG_NEWGEN:
            return False
        if end < body + nl.NFGENMSG_SIZE or data[body] != self.family:
            return False
        table = nl.attributes(data, body + nl.NFGENMSG_SIZE, end, (nl.NFT_TABLE_ATTRIBUTE,)).get(
            nl.NFT_TABLE_ATTRIBUTE)
        if table is None:
            return True  # a change naming no table: do not guess
        return table.rstrip(b"\0") == self.name



class LinkChanges(_Notifications):
    """Link and address changes of the links in `watched` ({ifindex: nlcodec.Link as
    last read}, which the owner updates; a message of another link is not a change).
    Any other message of these groups is not either; an overflow or a malformed
    message is."""

    def __init__(self, netns_path: str = None):
        super().__init__(nl.NETLINK_ROUTE, nl.RTMGRP_LINK | nl.RTMGRP_IPV4_IFADDR | nl.RTMGRP_IPV6_IFADDR, netns_path)
        self.watched = {}
        self.messages = 0  # messages read so far, relevant or not

    def _relevant(self, data, kind, body, end):
        self.messages += 1
        layout, at = _LINK_OR_ADDRESS.get(kind, (None, 0))
        if layout is None:
            return False
        if end < body + layout.size:
            return True  # truncated: do not guess
        index = layout.unpack_from(data, body)[at]
        if index not in self.watched:
            return False
        if kind != nl.RTM_NEWLINK:
            return True
        start = body - nl.HEADER.size
        return nl.decode_link(data, start, end - start) != self.watched[index]
