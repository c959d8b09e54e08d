"""The container side of an attachment: its interface, addresses and routes."""

import errno
import ipaddress

from pyroute2.netlink.exceptions import NetlinkError

from ..errors import CHECK_FAILED, IO_FAILURE, CniError
from .links import lookup

AF_INET, AF_INET6 = 2, 10
IFA_F_NODAD = 0x02


def _family(version: int) -> int:
    return AF_INET if version == 4 else AF_INET6


def configure(cipr, ifname: str, mac: str, ips: list, routes: list) -> dict:
    """Bring `ifname` up with `ips` (ip_interface list) and `routes`
    ([(network, gateway or None)]); returns {"index", "mac", "mtu"}."""
    link = lookup(cipr, ifname)
    index = link["index"]
    if mac:
        cipr.link("set", index=index, address=mac)
    lo = lookup(cipr, "lo")
    if lo is not None and lo.get("state") != "up":
        cipr.link("set", index=lo["index"], state="up")
    for ip in ips:
        extra = {"flags": IFA_F_NODAD} if ip.version == 6 else {}
        cipr.addr("add", index=index, address=str(ip.ip), prefixlen=ip.network.prefixlen, **extra)
    cipr.link("set", index=index, state="up")
    for dst, gateway in routes:
        spec = {"dst": str(dst), "oif": index}
        if gateway is not None:
            spec["gateway"] = str(gateway)
        try:
            cipr.route("add", **spec)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise CniError(IO_FAILURE, f"cannot add route {dst} via {gateway} in the "
                               f"container: {exc}")
    link = lookup(cipr, ifname)
    return {"index": index, "mac": link.get("address"), "mtu": link.get("mtu")}


def _routes_of(cipr, index: int) -> set:
    found = set()
    for family in (AF_INET, AF_INET6):
        for msg in cipr.route("dump", family=family, table=254):
            if msg.get("RTA_OIF") != index:
                continue
            dst = msg.get("RTA_DST") or ("0.0.0.0" if family == AF_INET else "::")
            network = ipaddress.ip_network(f"{dst}/{msg['dst_len']}")
            gw = msg.get("RTA_GATEWAY")
            found.add((network, ipaddress.ip_address(gw) if gw else None))
    return found


def verify(cipr, ifname: str, mac: str, ips: list, routes: list, mtu: int) -> None:
    """CHECK: the interface and everything ADD put there are still present."""
    link = lookup(cipr, ifname)
    if link is None:
        raise CniError(CHECK_FAILED, f"container interface {ifname} is missing")
    index = link["index"]
    if mac and link.get("address", "").lower() != mac.lower():
        raise CniError(CHECK_FAILED, f"container interface {ifname} has MAC {link.get('address')}, "
                       f"expected {mac}")
    if mtu and link.get("mtu") != mtu:
        raise CniError(CHECK_FAILED, f"container interface {ifname} has MTU {link.get('mtu')}, "
                       f"expected {mtu}")
    if link.get("state") != "up":
        raise CniError(CHECK_FAILED, f"container interface {ifname} is down")
    have = {ipaddress.ip_interface(f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}")
            for m in cipr.addr("dump", index=index)}
    for ip in ips:
        if ip not in have:
            raise CniError(CHECK_FAILED, f"container interface {ifname} lacks address {ip}")
    present = _routes_of(cipr, index)
    for dst, gateway in routes:
        if (dst, gateway) not in present:
            via = f" via {gateway}" if gateway else ""
            raise CniError(CHECK_FAILED, f"route {dst}{via} on {ifname} is missing in the container")


def delete_interface(cipr, ifname: str) -> bool:
    link = lookup(cipr, ifname)
    if link is None:
        return False
    try:
        cipr.link("del", index=link["index"])
    except NetlinkError as exc:
        if exc.code not in (errno.ENODEV, errno.ENOENT):
            raise
        return False
    return True
