"""A small synchronous rtnetlink client for the per-pod hot path.

pyroute2 0.9 runs every request through an asyncio loop (~1 ms each), opens
namespaced sockets by forking a helper process (~5 ms), and costs ~0.2 s to import.
The ADD/DEL/CHECK path needs a dozen plain requests, so this module builds them with
nlcodec.py (the package's one netlink codec) and talks to the kernel over an
ordinary blocking AF_NETLINK socket; a socket for another namespace is created by a
short-lived thread that enters that namespace (setns affects only the calling
thread) — the process itself never switches.  pyroute2 is never imported here.
"""

import ctypes
import errno
import os
import _thread
from _socket import AF_NETLINK, SOCK_RAW  # `socket` sets up enums: ~2 ms of each call
from _socket import socket as raw_socket

from . import nlcodec as nl
from .constants import (CLONE_NEWNET, FAMILY, IFA_F_NODAD, IFF_UP, LOOPBACK_INDEX, RT_SCOPE_LINK,
                        RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTPROT_STATIC)
from .errors import NetlinkError
from .nlcodec import Link

__all__ = ["LOOPBACK_INDEX", "Link", "Rtnl", "NetlinkError"]
_libc = ctypes.CDLL(None, use_errno=True)


def namespace_fd(netns) -> int:
    """A descriptor of network namespace `netns` for one use (the caller closes it):
    a path is opened (non-blocking: never held up by a FIFO), a descriptor this process
    holds (the one weft's forwarder handed weftd) is duplicated."""
    if isinstance(netns, int):
        return os.dup(netns)
    return os.open(netns, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)


def socket_in(netns, protocol: int = nl.NETLINK_ROUTE) -> raw_socket:
    """A netlink socket that lives in `netns`, a path or a descriptor (opened by a thread
    that setns'd and then ends, so no thread of the caller ever changes namespace).
    A bare _thread with a lock to wait on: `threading` costs a standalone call ~1.5 ms."""
    box = {}
    done = _thread.allocate_lock()
    done.acquire()

    def enter_and_open():
        try:
            fd = namespace_fd(netns)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns({netns}): {os.strerror(code)}")
                box["sock"] = raw_socket(AF_NETLINK, SOCK_RAW, protocol)
            finally:
                os.close(fd)
        except BaseException as exc:  # handed to the caller, as the thread's only way out
            box["error"] = exc
        finally:
            done.release()

    _thread.start_new_thread(enter_and_open, ())
    done.acquire()
    if "error" in box:
        raise box["error"]
    return box["sock"]


class RouteSocket:
    """One plain rtnetlink socket (protocol: another netlink family, e.g.
    NETLINK_NETFILTER), in this namespace or in `netns` (a path or a descriptor:
    namespace_fd), bound, with its own sequence numbers; strict: the kernel checks dump
    requests strictly and filters dumps by what they name (NETLINK_GET_STRICT_CHK,
    Linux 4.20)."""

    def __init__(self, netns=None, strict: bool = False, protocol: int = nl.NETLINK_ROUTE):
        if netns is not None and netns != "":  # a descriptor may be 0
            self.sock = socket_in(netns, protocol)
        else:
            self.sock = raw_socket(AF_NETLINK, SOCK_RAW, protocol)
        try:
            if strict:
                self.sock.setsockopt(nl.SOL_NETLINK, nl.NETLINK_GET_STRICT_CHK, 1)
            self.sock.bind((0, 0))
        except OSError:
            self.sock.close()
            raise
        self.seq = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- transport -------------------------------------------------------------
    def _request(self, msg_type: int, flags: int, body: bytes, what: str, decode=None) -> list:
        """Send one request; [decode(data, offset, length)] of its answers (until the
        acknowledgement or the end of the dump)."""
        self.seq += 1
        self.sock.send(nl.message(msg_type, flags, self.seq, body))
        replies = []
        while True:
            data = self.sock.recv(1 << 16)
            for offset, length, kind, _, seq in nl.messages(data):
                if seq != self.seq:
                    continue
                if kind == nl.NLMSG_ERROR:
                    code = nl.error_code(data, offset, length)
                    if code:
                        raise NetlinkError(code, what)
                    return replies  # the ACK
                if kind == nl.NLMSG_DONE:
                    return replies
                if decode is not None:
                    replies.append(decode(data, offset, length))
            if not flags & (nl.NLM_F_DUMP | nl.NLM_F_ACK):
                return replies


class Rtnl(RouteSocket):
    """One rtnetlink socket, in this namespace or in `netns` (a path or a descriptor)."""

    def __init__(self, netns=None):
        # kernel-side filtering of dumps (addresses of one link, routes of one table)
        super().__init__(netns, strict=True)

    # -- links -----------------------------------------------------------------
    def link(self, name: str) -> Link | None:
        try:
            found = self._request(nl.RTM_GETLINK, nl.NLM_F_REQUEST,
                                  nl.ifinfomsg(nl.string_attr(nl.IFLA_IFNAME, name)), f"get link {name}",
                                  nl.decode_link)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        return found[0] if found else None

    def links(self) -> list:
        return self._request(nl.RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, nl.ifinfomsg(), "list links",
                             nl.decode_link)

    def _new_link(self, body: bytes, what: str):
        self._request(nl.RTM_NEWLINK, nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL, body, what)

    def add_bridge(self, name: str, mtu: int, address: str):
        """A bridge with a fixed MAC: left to itself it takes its lowest port's MAC,
        which changes as pods come and go."""
        self._new_link(nl.ifinfomsg(nl.string_attr(nl.IFLA_IFNAME, name), nl.u32_attr(nl.IFLA_MTU, mtu),
                                    nl.attr(nl.IFLA_ADDRESS, nl.mac_bytes(address)),
                                    nl.nested(nl.IFLA_LINKINFO, nl.string_attr(nl.IFLA_INFO_KIND, "bridge"))),
                       f"add bridge {name}")

    def add_veth(self, name: str, peer: str, peer_netns, mtu: int):
        """peer_netns: a path, or a descriptor (namespace_fd)."""
        fd = namespace_fd(peer_netns)
        try:
            # VETH_INFO_PEER holds a whole ifinfomsg (the peer's) with its attributes
            peer_msg = nl.ifinfomsg(nl.string_attr(nl.IFLA_IFNAME, peer), nl.u32_attr(nl.IFLA_NET_NS_FD, fd),
                                    nl.u32_attr(nl.IFLA_MTU, mtu))
            self._new_link(nl.ifinfomsg(nl.string_attr(nl.IFLA_IFNAME, name), nl.u32_attr(nl.IFLA_MTU, mtu),
                                        nl.nested(nl.IFLA_LINKINFO, nl.string_attr(nl.IFLA_INFO_KIND, "veth"),
                                                  nl.nested(nl.IFLA_INFO_DATA,
                                                            nl.attr(nl.VETH_INFO_PEER, peer_msg)))),
                           f"add veth {name} (peer {peer} in {peer_netns})")
        finally:
            os.close(fd)

    def set_link(self, index: int, *, up=None, mtu=None, master=None, address=None, hairpin=None, name=None):
        """master=0 takes the link off its bridge; name renames it (the kernel refuses
        to rename a link that is up: set it down in an earlier call)."""
        attrs = []
        if name is not None:
            attrs.append(nl.string_attr(nl.IFLA_IFNAME, name))
        if mtu is not None:
            attrs.append(nl.u32_attr(nl.IFLA_MTU, mtu))
        if master is not None:
            attrs.append(nl.u32_attr(nl.IFLA_MASTER, master))
        if address is not None:
            attrs.append(nl.attr(nl.IFLA_ADDRESS, nl.mac_bytes(address)))
        if hairpin is not None:
            attrs.append(nl.nested(nl.IFLA_LINKINFO, nl.string_attr(nl.IFLA_INFO_SLAVE_KIND, "bridge"),
                                   nl.nested(nl.IFLA_INFO_SLAVE_DATA,
                                             nl.u8_attr(nl.IFLA_BRPORT_MODE, 1 if hairpin else 0))))
        flags = (IFF_UP if up else 0) if up is not None else 0
        body = nl.ifinfomsg(*attrs, index=index, flags=flags, change=IFF_UP if up is not None else 0)
        self._request(nl.RTM_NEWLINK, nl.NLM_F_REQUEST | nl.NLM_F_ACK, body, f"set link #{index}")

    def delete_link(self, index: int):
        self._request(nl.RTM_DELLINK, nl.NLM_F_REQUEST | nl.NLM_F_ACK, nl.ifinfomsg(index=index),
                      f"delete link #{index}")

    # -- addresses -------------------------------------------------------------
    def addresses(self, index: int) -> list:
        """Global-scope addresses on the link, as ip_interface (the kernel filters the
        dump by link, so this costs the same with 250 pods on the node as with none)."""
        return [iface for got, scope, iface in
                self._request(nl.RTM_GETADDR, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, nl.ifaddrmsg(index=index),
                              "list addresses", nl.decode_address)
                if got == index and scope == RT_SCOPE_UNIVERSE and iface is not None]

    def _address(self, kind: int, flags: int, index: int, iface, nodad: bool, what: str):
        attrs = [nl.attr(nl.IFA_ADDRESS, iface.ip.packed)]
        if iface.version == 4:
            attrs.append(nl.attr(nl.IFA_LOCAL, iface.ip.packed))
        if nodad:
            attrs.append(nl.u32_attr(nl.IFA_FLAGS, IFA_F_NODAD))
        self._request(kind, flags, nl.ifaddrmsg(*attrs, family=FAMILY[iface.version],
                                                prefixlen=iface.network.prefixlen,
                                                flags=IFA_F_NODAD if nodad else 0, index=index), what)

    def add_address(self, index: int, iface, nodad: bool = False):
        self._address(nl.RTM_NEWADDR, nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL, index,
                      iface, nodad, f"add address {iface}")

    def delete_address(self, index: int, iface):
        self._address(nl.RTM_DELADDR, nl.NLM_F_REQUEST | nl.NLM_F_ACK, index, iface, False,
                      f"delete address {iface}")

    # -- routes ----------------------------------------------------------------
    def add_route(self, dst, gateway, oif: int):
        attrs = [nl.u32_attr(nl.RTA_OIF, oif)]
        if dst.prefixlen:
            attrs.append(nl.attr(nl.RTA_DST, dst.network_address.packed))
        if gateway is not None:
            attrs.append(nl.attr(nl.RTA_GATEWAY, gateway.packed))
        body = nl.rtmsg(*attrs, family=FAMILY[dst.version], dst_len=dst.prefixlen, table=RT_TABLE_MAIN,
                        protocol=RTPROT_STATIC, scope=RT_SCOPE_UNIVERSE if gateway is not None else RT_SCOPE_LINK,
                        type_=nl.RTN_UNICAST)
        via = f" via {gateway}" if gateway is not None else ""
        self._request(nl.RTM_NEWROUTE, nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL, body,
                      f"add route {dst}{via}")

    def routes(self, oif: int) -> set:
        """{(network, gateway or None)} of main-table routes leaving through oif."""
        found = set()
        for version in (4, 6):
            for route in self._request(nl.RTM_GETROUTE, nl.NLM_F_REQUEST | nl.NLM_F_DUMP,
                                       nl.rtmsg(family=FAMILY[version]), "list routes", nl.decode_route):
                if route.entry.oif == oif and route.table == RT_TABLE_MAIN:
                    found.add((route.entry.dst, route.entry.gateway))
        return found
