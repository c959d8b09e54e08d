"""A small synchronous rtnetlink client for the per-pod hot path.

pyroute2 0.9 runs every request through an asyncio loop (~1 ms each) and opens
namespaced sockets by forking a helper process (~5 ms).  The ADD/DEL/CHECK path
needs a dozen plain requests, so this module keeps pyroute2's message classes
(encoding and decoding of every attribute) and talks to the kernel over an
ordinary blocking AF_NETLINK socket; a socket for another namespace is created by
a short-lived thread that enters that namespace (setns affects only the calling
thread) — the process itself never switches.
"""

import ctypes
import errno
import ipaddress
import os
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Optional

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .constants import (CLONE_NEWNET, FAMILY, IFA_F_NODAD, IFF_UP, LOOPBACK_INDEX, RT_SCOPE_LINK,
                        RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTPROT_STATIC)
from .errors import NetlinkError

NETLINK_ROUTE = 0
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
NLMSG_ERROR, NLMSG_DONE = 2, 3
__all__ = ["LOOPBACK_INDEX", "Link", "Rtnl", "NetlinkError"]
_HEADER = struct.Struct("=IHHII")
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Link:
    index: int
    name: str
    kind: str
    mtu: int
    up: bool
    master: Optional[int]
    address: str


_NLA = struct.Struct("=HH")
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_INFO_KIND = 1, 3, 4, 10, 18, 1


def _attributes(data: bytes, start: int, end: int) -> dict:
    """{type: value bytes} of the netlink attributes in data[start:end]."""
    found = {}
    while start + 4 <= end:
        length, kind = _NLA.unpack_from(data, start)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[start + 4:start + length]
        start += (length + 3) & ~3
    return found


class RawLink:
    """An RTM_NEWLINK reply read for the five attributes weft uses.  pyroute2 decodes
    every attribute (statistics included): ~0.3 ms per link, most of a lookup."""

    def __init__(self, data: bytes):
        self.data = data
        self.link = None

    def decode(self):
        length = _HEADER.unpack_from(self.data, 0)[0]
        _, _, index, flags, _ = _IFINFO.unpack_from(self.data, 16)
        attrs = _attributes(self.data, 32, length)
        info = attrs.get(IFLA_LINKINFO)
        kind = _attributes(info, 0, len(info)).get(IFLA_INFO_KIND, b"") if info else b""
        mac = attrs.get(IFLA_ADDRESS, b"")
        master = attrs.get(IFLA_MASTER)
        self.link = Link(index=index, name=attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
                         kind=kind.rstrip(b"\0").decode(), mtu=struct.unpack("=I", attrs[IFLA_MTU])[0]
                         if IFLA_MTU in attrs else 0, up=bool(flags & IFF_UP),
                         master=struct.unpack("=I", master)[0] if master else None,
                         address=":".join(f"{b:02x}" for b in mac))


def socket_in(netns_path: str, protocol: int = NETLINK_ROUTE) -> socket.socket:
    """A netlink socket that lives in netns_path (opened by a thread that setns'd)."""
    box = {}

    def enter_and_open():
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            box["error"] = exc
            return
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                box["error"] = OSError(code, f"setns({netns_path}): {os.strerror(code)}")
                return
            box["sock"] = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        finally:
            os.close(fd)

    worker = threading.Thread(target=enter_and_open, name="weft-netns")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["sock"]


class RouteSocket:
    """One plain rtnetlink socket, in this namespace or in `netns_path` (bound, with its
    own sequence numbers); strict: the kernel checks dump requests strictly and filters
    dumps by what they name (NETLINK_GET_STRICT_CHK, Linux 4.20)."""

    def __init__(self, netns_path: str = None, strict: bool = False):
        if netns_path:
            self.sock = socket_in(netns_path)
        else:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            if strict:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
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


class Rtnl(RouteSocket):
    """One rtnetlink socket, in this namespace or in `netns_path`."""

    def __init__(self, netns_path: str = None):
        # kernel-side filtering of dumps (addresses of one link, routes of one table)
        super().__init__(netns_path, strict=True)

    # -- transport -------------------------------------------------------------
    def _request(self, msg, msg_type: int, flags: int, what: str, reply_class=None) -> list:
        self.seq += 1
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = self.seq
        msg.encode()
        self.sock.send(msg.data)
        replies = []
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset < len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                if seq == self.seq:
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + 16)[0]
                        if code:
                            raise NetlinkError(code, what)
                        return replies  # the ACK
                    if kind == NLMSG_DONE:
                        return replies
                    if reply_class is not None:
                        reply = reply_class(data[offset:offset + length])
                        reply.decode()
                        replies.append(reply)
                offset += (length + 3) & ~3
            if not flags & (NLM_F_DUMP | NLM_F_ACK):
                return replies

    # -- links -----------------------------------------------------------------
    def link(self, name: str) -> Optional[Link]:
        msg = ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name)]
        try:
            found = self._request(msg, RTM_GETLINK, NLM_F_REQUEST, f"get link {name}", RawLink)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        return found[0].link if found else None

    def links(self) -> list:
        return [m.link for m in
                self._request(ifinfmsg(), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, "list links", RawLink)]

    def _new_link(self, attrs: list, what: str):
        msg = ifinfmsg()
        msg["attrs"] = attrs
        self._request(msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, what)

    def add_bridge(self, name: str, mtu: int, address: str):
        """A bridge with a fixed MAC: left to itself it takes its lowest port's MAC,
        which changes as pods come and go."""
        self._new_link([("IFLA_IFNAME", name), ("IFLA_MTU", mtu), ("IFLA_ADDRESS", address),
                        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]})], f"add bridge {name}")

    def add_veth(self, name: str, peer: str, peer_netns_path: str, mtu: int):
        fd = os.open(peer_netns_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            peer_attrs = {"attrs": [("IFLA_IFNAME", peer), ("IFLA_NET_NS_FD", fd), ("IFLA_MTU", mtu)]}
            self._new_link([("IFLA_IFNAME", name), ("IFLA_MTU", mtu),
                            ("IFLA_LINKINFO", {"attrs": [
                                ("IFLA_INFO_KIND", "veth"),
                                ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer_attrs)]})]})],
                           f"add veth {name} (peer {peer} in {peer_netns_path})")
        finally:
            os.close(fd)

    def set_link(self, index: int, *, up=None, mtu=None, master=None, address=None, hairpin=None):
        msg = ifinfmsg()
        msg["index"] = index
        attrs = []
        if up is not None:
            msg["flags"] = IFF_UP if up else 0
            msg["change"] = IFF_UP
        if mtu is not None:
            attrs.append(("IFLA_MTU", mtu))
        if master is not None:
            attrs.append(("IFLA_MASTER", master))
        if address is not None:
            attrs.append(("IFLA_ADDRESS", address))
        if hairpin is not None:
            attrs.append(("IFLA_LINKINFO", {"attrs": [
                ("IFLA_INFO_SLAVE_KIND", "bridge"),
                ("IFLA_INFO_SLAVE_DATA", {"attrs": [("IFLA_BRPORT_MODE", 1 if hairpin else 0)]})]}))
        msg["attrs"] = attrs
        self._request(msg, RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, f"set link #{index}")

    def delete_link(self, index: int):
        msg = ifinfmsg()
        msg["index"] = index
        self._request(msg, RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, f"delete link #{index}")

    # -- addresses -------------------------------------------------------------
    def addresses(self, index: int) -> list:
        """Global-scope addresses on the link, as ip_interface (the kernel filters the
        dump by link, so this costs the same with 250 pods on the node as with none)."""
        query = ifaddrmsg()
        query["index"] = index
        found = []
        for msg in self._request(query, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP,
                                 "list addresses", ifaddrmsg):
            if msg["index"] == index and msg["scope"] == RT_SCOPE_UNIVERSE:
                found.append(ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}"))
        return found

    def _address(self, kind: int, flags: int, index: int, iface, nodad: bool, what: str):
        msg = ifaddrmsg()
        msg["family"] = FAMILY[iface.version]
        msg["prefixlen"] = iface.network.prefixlen
        msg["index"] = index
        attrs = [("IFA_ADDRESS", str(iface.ip))]
        if iface.version == 4:
            attrs.append(("IFA_LOCAL", str(iface.ip)))
        if nodad:
            msg["flags"] = IFA_F_NODAD
            attrs.append(("IFA_FLAGS", IFA_F_NODAD))
        msg["attrs"] = attrs
        self._request(msg, kind, flags, what)

    def add_address(self, index: int, iface, nodad: bool = False):
        self._address(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, index, iface,
                      nodad, f"add address {iface}")

    def delete_address(self, index: int, iface):
        self._address(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, index, iface, False, f"delete address {iface}")

    # -- routes ----------------------------------------------------------------
    def add_route(self, dst, gateway, oif: int):
        msg = rtmsg()
        msg["family"] = FAMILY[dst.version]
        msg["dst_len"] = dst.prefixlen
        msg["table"] = RT_TABLE_MAIN
        msg["proto"] = RTPROT_STATIC
        msg["scope"] = RT_SCOPE_UNIVERSE
        msg["type"] = 1  # unicast
        attrs = [("RTA_OIF", oif)]
        if dst.prefixlen:
            attrs.append(("RTA_DST", str(dst.network_address)))
        if gateway is not None:
            attrs.append(("RTA_GATEWAY", str(gateway)))
        else:
            msg["scope"] = RT_SCOPE_LINK
        msg["attrs"] = attrs
        via = f" via {gateway}" if gateway is not None else ""
        self._request(msg, RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                      f"add route {dst}{via}")

    def routes(self, oif: int) -> set:
        """{(network, gateway or None)} of main-table routes leaving through oif."""
        found = set()
        for version in (4, 6):
            msg = rtmsg()
            msg["family"] = FAMILY[version]
            for route in self._request(msg, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, "list routes", rtmsg):
                if route.get_attr("RTA_OIF") != oif or route.get_attr("RTA_TABLE") not in (None, RT_TABLE_MAIN):
                    continue
                dst = route.get_attr("RTA_DST") or ("0.0.0.0" if version == 4 else "::")
                gateway = route.get_attr("RTA_GATEWAY")
                found.add((ipaddress.ip_network(f"{dst}/{route['dst_len']}"),
                           ipaddress.ip_address(gateway) if gateway else None))
        return found
