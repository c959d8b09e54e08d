"""The node's underlay: which interface carries its public addresses, and its MTU.

A node has an IPv4 underlay address, an IPv6 one, or both (agent/node.py).  Discovery
takes the first global address of the interface; for IPv6 it skips temporary (privacy),
deprecated and DAD-failed addresses (link-local ones are not global).
"""

import ipaddress
from typing import NamedTuple, Optional

from .constants import IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TEMPORARY
from .errors import DatapathError

# IPv6 addresses never picked as the underlay: they change or go away on their own
UNSTABLE_IPV6 = IFA_F_TEMPORARY | IFA_F_DEPRECATED | IFA_F_DADFAILED


class Underlay(NamedTuple):
    """The interface holding a node's public IP."""

    index: int
    name: str
    mtu: int
    network: ipaddress._BaseNetwork


def interface_of_ip(nl, ip) -> Underlay:
    """The interface holding address `ip`, with its MTU and the address's network."""
    ip = ipaddress.ip_address(str(ip))
    for index, address in nl.addresses(version=ip.version, scope=None):
        if address.ip != ip:
            continue
        link = nl.link(index=index)
        return Underlay(index, link.name, link.mtu, address.network)
    flag = "--public-ip" if ip.version == 4 else "--public-ipv6"
    raise DatapathError(f"no interface holds the public IP {ip}; set {flag}/--iface to an "
                        "address of this node")


def default_route_interface(nl, version: int = 4) -> int:
    """ifindex of the main table's default route (lowest metric; first hop if multipath)."""
    oif = nl.default_route_oif(version)
    if oif is None:
        raise DatapathError(f"no IPv{version} default route; set --iface or --public-ip")
    return oif


def iface_index(nl, iface: str) -> int:
    link = nl.link(iface)
    if link is None:
        raise DatapathError(f"--iface {iface} does not exist on this node")
    return link.index


def global_address(nl, index: int, version: int) -> Optional[ipaddress._BaseAddress]:
    """The first global address of one family on link `index` (IPv6: a stable one), or None."""
    skip = UNSTABLE_IPV6 if version == 6 else 0
    for _, address in nl.addresses(index=index, version=version, skip_flags=skip):
        return address.ip
    return None


def discover(nl, iface: Optional[str]) -> tuple:
    """(IPv4 or None, IPv6 or None): the underlay addresses of `iface`, else of each
    family's default-route interface; DatapathError when neither family has one."""
    if iface:
        index = iface_index(nl, iface)
        found = (global_address(nl, index, 4), global_address(nl, index, 6))
        if found == (None, None):
            raise DatapathError(f"--iface {iface} has no global IPv4 address and no stable global IPv6 "
                                "address (temporary, deprecated and link-local ones are skipped): set "
                                "--public-ip or --public-ipv6")
        return found
    found = []
    for version in (4, 6):
        index = nl.default_route_oif(version)
        found.append(global_address(nl, index, version) if index is not None else None)
    if found == [None, None]:
        raise DatapathError("no default route with a global address to pick the underlay from: set "
                            "--public-ip, --public-ipv6 or --iface")
    return tuple(found)
