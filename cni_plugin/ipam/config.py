"""The `ipam` section of a network configuration: parsing, defaults, validation.

Every problem is CniError INVALID_NETCONF (7) with a message naming the key path,
e.g. `ipam.ranges[0][1].subnet "10.1.0.0/33" is not a valid CIDR`.
"""

import ipaddress
import json
import os
from collections import namedtuple

from ..cni.errors import INVALID_NETCONF, CniError
from .. import paths
from ..cni import netconf

DEFAULT_DATA_DIR = paths.IPAM_DATA_DIR

# The longest prefix that still leaves room for a gateway and at least one host.
_LONGEST_PREFIX = {4: 30, 6: 126}
_FAMILY_NAME = {4: "IPv4", 6: "IPv6"}


def _invalid(msg: str) -> CniError:
    return CniError(INVALID_NETCONF, msg)


# Records are namedtuples, not dataclasses: `dataclasses` imports `inspect` (with ast,
# dis, tokenize), ~8 ms of every standalone call's start-up.
class AddressRange(namedtuple("AddressRange", "subnet start end gateway where", defaults=("",))):
    """One range: addresses start..end (inclusive) of subnet (ip_network; the others
    ip_address), with its gateway; where: its key path, for messages."""

    __slots__ = ()

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, ip) -> bool:
        return ip.version == self.version and self.start <= ip <= self.end

    def is_reserved(self, ip) -> bool:
        """The gateway, the network address and (IPv4) the broadcast address."""
        if ip == self.gateway or ip == self.subnet.network_address:
            return True
        return self.version == 4 and ip == self.subnet.broadcast_address

    def interface(self, ip) -> str:
        """ip with this range's prefix length, e.g. 10.1.0.5/24."""
        return f"{ip}/{self.subnet.prefixlen}"

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


class RangeSet(namedtuple("RangeSet", "index ranges")):
    """Ranges of one address family (a tuple of AddressRange); an attachment gets one
    address per range set."""

    __slots__ = ()

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def range_of(self, ip) -> AddressRange | None:
        return next((r for r in self.ranges if r.contains(ip)), None)

    def describe(self) -> str:
        return f"range set {self.index} ({', '.join(str(r) for r in self.ranges)})"


class IpamConfig(namedtuple("IpamConfig", "network range_sets routes data_dir resolv_conf")):
    """range_sets: tuple of RangeSet; routes: tuple of dict; resolv_conf: a path or None."""

    __slots__ = ()

    @property
    def store_dir(self) -> str:
        return os.path.join(self.data_dir, self.network)


def load(conf: dict, need_ranges: bool = True) -> IpamConfig:
    """conf (the whole network configuration) -> IpamConfig; CniError 7 on any problem.

    Only ADD needs ranges: DEL, CHECK, GC and STATUS work from the store alone, so a
    main plugin whose ranges come from a lease that is gone can still clean up."""
    network = netconf.check_name(conf)
    ipam = netconf.typed(conf, "ipam", dict, "")
    if ipam is None:
        raise _invalid("network configuration has no ipam section")
    data_dir = netconf.typed(ipam, "dataDir", str, "ipam.", DEFAULT_DATA_DIR)
    if not os.path.isabs(data_dir):
        raise _invalid(f"ipam.dataDir {json.dumps(data_dir)} must be an absolute path")
    return IpamConfig(
        network=network,
        range_sets=_parse_range_sets(ipam, need_ranges),
        routes=_parse_routes(ipam),
        data_dir=data_dir,
        resolv_conf=netconf.typed(ipam, "resolvConf", str, "ipam."),
    )


# --- ranges ---------------------------------------------------------------


def _parse_range_sets(ipam: dict, need_ranges: bool) -> tuple[RangeSet, ...]:
    raw_sets = []  # (where, list of (where, raw range))
    if "subnet" in ipam:
        raw_sets.append(("ipam", [("ipam", ipam)]))
    ranges = netconf.typed(ipam, "ranges", list, "ipam.", [])
    for i, raw_set in enumerate(ranges):
        where = f"ipam.ranges[{i}]"
        if not isinstance(raw_set, list):
            raise _invalid(f"{where} must be a list of ranges, got {json.dumps(raw_set)}")
        if not raw_set:
            raise _invalid(f"{where} is empty: a range set needs at least one range")
        raw_sets.append((where, [(f"{where}[{j}]", r) for j, r in enumerate(raw_set)]))
    if not raw_sets and need_ranges:
        raise _invalid("ipam has no ranges: set ipam.ranges (or the legacy ipam.subnet)")
    sets = tuple(
        _parse_range_set(index, where, members) for index, (where, members) in enumerate(raw_sets)
    )
    _check_no_overlap([r for s in sets for r in s.ranges])
    return sets


def _parse_range_set(index: int, where: str, members: list) -> RangeSet:
    ranges = tuple(_parse_range(raw, member_where) for member_where, raw in members)
    first = ranges[0]
    for other in ranges[1:]:
        if other.version != first.version:
            raise _invalid(
                f"{where} mixes address families: {other.where}.subnet is "
                f"{_FAMILY_NAME[other.version]} but {first.where}.subnet is "
                f"{_FAMILY_NAME[first.version]}; put each family in its own range set"
            )
    return RangeSet(index=index, ranges=ranges)


def _parse_range(raw, where: str) -> AddressRange:
    if not isinstance(raw, dict):
        raise _invalid(f"{where} must be an object, got {json.dumps(raw)}")
    text = netconf.typed(raw, "subnet", str, f"{where}.")
    if text is None:
        raise _invalid(f"{where}.subnet is required")
    subnet = _parse_subnet(text, f"{where}.subnet")
    first_host = subnet.network_address + 1
    last_host = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
    start = _parse_member(raw, "rangeStart", subnet, where, default=first_host)
    end = _parse_member(raw, "rangeEnd", subnet, where, default=last_host)
    gateway = _parse_member(raw, "gateway", subnet, where, default=first_host)
    if start > end:
        raise _invalid(f"{where}.rangeStart {start} is after {where}.rangeEnd {end}")
    _check_gateway(gateway, subnet, where)
    return AddressRange(subnet=subnet, start=start, end=end, gateway=gateway, where=where)


def _parse_subnet(text: str, where: str):
    try:
        if "/" not in text:
            raise ValueError("no prefix length")
        subnet = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _invalid(f"{where} {json.dumps(text)} is not a valid CIDR")
    if ipaddress.ip_interface(text).ip != subnet.network_address:
        raise _invalid(
            f"{where} {json.dumps(text)} has host bits set; did you mean \"{subnet}\"?"
        )
    if subnet.prefixlen > _LONGEST_PREFIX[subnet.version]:
        raise _invalid(
            f"{where} {json.dumps(text)} is too small: a /{subnet.prefixlen} leaves no room "
            f"for a gateway and hosts (the longest {_FAMILY_NAME[subnet.version]} prefix "
            f"allowed is /{_LONGEST_PREFIX[subnet.version]})"
        )
    return subnet


def _parse_member(raw: dict, key: str, subnet, where: str, default):
    """An address key of a range (rangeStart, rangeEnd, gateway) that must lie in subnet."""
    text = netconf.typed(raw, key, str, f"{where}.")
    if text is None or text == "":
        return default
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise _invalid(f"{where}.{key} {json.dumps(text)} is not a valid IP address")
    if ip.version != subnet.version or ip not in subnet:
        raise _invalid(f"{where}.{key} {json.dumps(text)} is not inside subnet {subnet}")
    return ip


def _check_gateway(gateway, subnet, where: str) -> None:
    if gateway == subnet.network_address:
        raise _invalid(f"{where}.gateway {gateway} is the network address of {subnet}")
    if subnet.version == 4 and gateway == subnet.broadcast_address:
        raise _invalid(f"{where}.gateway {gateway} is the broadcast address of {subnet}")


def _check_no_overlap(ranges: list[AddressRange]) -> None:
    for i, later in enumerate(ranges):
        for earlier in ranges[:i]:
            if later.version != earlier.version:
                continue
            if later.start <= earlier.end and earlier.start <= later.end:
                raise _invalid(
                    f"{later.where} ({later}) overlaps {earlier.where} ({earlier}); "
                    "ranges must not overlap, within or across range sets"
                )


# --- routes and DNS -------------------------------------------------------


def _parse_routes(ipam: dict) -> tuple[dict, ...]:
    routes = netconf.typed(ipam, "routes", list, "ipam.", [])
    return tuple(_parse_route(raw, f"ipam.routes[{i}]") for i, raw in enumerate(routes))


def _parse_route(raw, where: str) -> dict:
    if not isinstance(raw, dict):
        raise _invalid(f"{where} must be an object, got {json.dumps(raw)}")
    dst_text = netconf.typed(raw, "dst", str, f"{where}.")
    if dst_text is None:
        raise _invalid(f"{where}.dst is required")
    try:
        dst = ipaddress.ip_network(dst_text, strict=False)
    except ValueError:
        raise _invalid(f"{where}.dst {json.dumps(dst_text)} is not a valid CIDR")
    route = {"dst": str(dst)}
    gw_text = netconf.typed(raw, "gw", str, f"{where}.")
    if gw_text:
        try:
            gw = ipaddress.ip_address(gw_text)
        except ValueError:
            raise _invalid(f"{where}.gw {json.dumps(gw_text)} is not a valid IP address")
        if gw.version != dst.version:
            raise _invalid(f"{where}.gw {gw} is not of the same address family as dst {dst}")
        route["gw"] = str(gw)
    return route


def load_dns(path: str | None) -> dict:
    """The DNS settings of a resolv.conf file ({} when path is None); CniError 7 if unreadable."""
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        raise _invalid(f"ipam.resolvConf {json.dumps(path)} cannot be read: {exc}")
    return parse_resolv_conf(text)


def parse_resolv_conf(text: str) -> dict:
    """resolv.conf text -> {nameservers, domain, search, options}, empty keys left out."""
    nameservers, search, options, domain = [], [], [], ""
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        keyword, values = words[0], words[1:]
        if keyword == "nameserver" and values:
            nameservers.append(values[0])
        elif keyword == "domain" and values:
            domain = values[0]
        elif keyword == "search":
            search = values  # the last search line wins, as in the resolver
        elif keyword == "options":
            options.extend(values)
    dns = {"nameservers": nameservers, "domain": domain, "search": search, "options": options}
    return {k: v for k, v in dns.items() if v}
