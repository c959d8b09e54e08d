"""The container side of an attachment: its interface, addresses and routes."""

import errno

from .constants import LOOPBACK_INDEX
from .errors import DatapathError, DriftFound, NetlinkError


def configure(rt, ifname: str, mac: str, ips: list, routes: list) -> dict:
    """Bring `ifname` up with `ips` (ip_interface list) and `routes`
    ([(network, gateway or None)]); returns {"index", "mac", "mtu"}."""
    link = rt.link(ifname)
    rt.set_link(LOOPBACK_INDEX, up=True)
    for ip in ips:
        rt.add_address(link.index, ip, nodad=ip.version == 6)
    rt.set_link(link.index, up=True, address=mac or None)
    for dst, gateway in routes:
        try:
            rt.add_route(dst, gateway, link.index)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise DatapathError(f"cannot add route {dst} via {gateway} in the "
                                    f"container: {exc.strerror}") from None
    return {"index": link.index, "mac": mac or link.address, "mtu": link.mtu}


def current_mac(rt, ifname: str) -> str:
    """The MAC the interface has now (the kernel's random one until configure sets another)."""
    link = rt.link(ifname)
    if link is None:
        raise DatapathError(f"container interface {ifname} is missing")
    return link.address


def verify(rt, ifname: str, mac: str, ips: list, routes: list, mtu: int) -> None:
    """CHECK: the interface and everything ADD put there are still present."""
    link = rt.link(ifname)
    if link is None:
        raise DriftFound(f"container interface {ifname} is missing")
    if mac and link.address.lower() != mac.lower():
        raise DriftFound(f"container interface {ifname} has MAC {link.address}, "
                         f"expected {mac}")
    if mtu and link.mtu != mtu:
        raise DriftFound(f"container interface {ifname} has MTU {link.mtu}, "
                         f"expected {mtu}")
    if not link.up:
        raise DriftFound(f"container interface {ifname} is down")
    have = set(rt.addresses(link.index))
    for ip in ips:
        if ip not in have:
            raise DriftFound(f"container interface {ifname} lacks address {ip}")
    present = rt.routes(link.index)
    for dst, gateway in routes:
        if (dst, gateway) not in present:
            via = f" via {gateway}" if gateway else ""
            raise DriftFound(f"route {dst}{via} on {ifname} is missing in the container")
