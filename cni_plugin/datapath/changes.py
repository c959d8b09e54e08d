"""Has the kernel changed what weft owns?  rtnetlink change notifications, filtered.

A KernelChanges socket joins the link, neighbour (FDB entries arrive here too, as
AF_BRIDGE neighbour messages) and IPv4/IPv6 route multicast groups of this network
namespace and is drained without blocking.  changed() is True when, since the last
call, a message named weft's device (a link, neighbour or FDB change on its ifindex) or
a route of weft's protocol (added, replaced or deleted, by anyone), or when the
socket overflowed (ENOBUFS: messages were lost, so assume a change).  Only message
headers are looked at (no attribute decoding): a few microseconds per message.

The agent's reconcile uses it to skip a pass when nothing it owns was touched since
its last full read: on a quiet node a pass then costs no dump at all.
"""

import errno
import socket
import struct

from .constants import WEFT_RTPROT

NETLINK_ROUTE = 0
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x4, 0x40, 0x400
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NLMSG_OVERRUN = 4
_HEADER = struct.Struct("=IHHII")         # nlmsghdr: len, type, flags, seq, pid
_IFINDEX_AT = 4                            # ifinfomsg and ndmsg: family, pads, then ifindex
_RTM_PROTOCOL_AT = 5                       # rtmsg: family, dst_len, src_len, tos, table, protocol
RECEIVE_BUFFER = 4 << 20


class KernelChanges:
    def __init__(self, device_index: int = 0):
        self.device_index = device_index
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self.sock.bind((0, RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
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
            changed = self._relevant(data) or changed

    def _relevant(self, data: bytes) -> bool:
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                return True  # malformed: do not guess
            body = offset + _HEADER.size
            if kind == NLMSG_OVERRUN:
                return True
            if kind in (RTM_NEWROUTE, RTM_DELROUTE):
                if len(data) > body + _RTM_PROTOCOL_AT and data[body + _RTM_PROTOCOL_AT] == WEFT_RTPROT:
                    return True
            elif kind in (RTM_NEWNEIGH, RTM_DELNEIGH, RTM_NEWLINK, RTM_DELLINK):
                if len(data) >= body + _IFINDEX_AT + 4:
                    index = struct.unpack_from("=i", data, body + _IFINDEX_AT)[0]
                    if index == self.device_index and index:
                        return True
                    # without a device of its own (host-gw) weft's routes hang off the
                    # underlay, and IPv4 routes flushed with a link come with no route
                    # message: any link change counts
                    if not self.device_index and kind in (RTM_NEWLINK, RTM_DELLINK):
                        return True
            offset += (length + 3) & ~3
        return False

    def close(self) -> None:
        self.sock.close()
