"""The node's underlay: which interface carries its public address, and its MTU."""

import ipaddress
from typing import NamedTuple

from .errors import DatapathError


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
    raise DatapathError(f"no interface holds the public IP {ip}; set --public-ip/--iface to an "
                        "address of this node")


def default_route_interface(nl, version: int = 4) -> int:
    """ifindex of the main table's default route (lowest metric; first hop if multipath)."""
    oif = nl.default_route_oif(version)
    if oif is None:
        raise DatapathError(f"no IPv{version} default route; set --iface or --public-ip")
    return oif


def public_ipv4(nl, iface: str = None) -> ipaddress.IPv4Address:
    """The first global IPv4 address of `iface`, else of the default route's interface."""
    if iface:
        link = nl.link(iface)
        if link is None:
            raise DatapathError(f"--iface {iface} does not exist on this node")
        index = link.index
    else:
        try:
            index = default_route_interface(nl)
        except DatapathError:
            raise DatapathError("no default route to pick the underlay from: set --public-ip or "
                                "--iface") from None
    for _, address in nl.addresses(index=index, version=4):
        return address.ip
    raise DatapathError(f"interface #{index} has no global IPv4 address: set --public-ip")
