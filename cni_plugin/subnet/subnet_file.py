"""The subnet file /run/weft/<network>.env: weftd writes it, the plugin reads it.

Format (one KEY=VALUE per line, '#' comments allowed):
    WEFT_NETWORK=10.244.0.0/16
    WEFT_SUBNET=10.244.3.1/24
    WEFT_IPV6_NETWORK=fd00:10:244::/48      (only with IPv6)
    WEFT_IPV6_SUBNET=fd00:10:244:3::1/64
    WEFT_MTU=1450
    WEFT_IPMASQ=true
    WEFT_IPV6_IPMASQ=false                  (only when the config overrides IPMasq for a
                                             family: IPv4Masq/IPv6Masq -> WEFT_IPV4_IPMASQ/
                                             WEFT_IPV6_IPMASQ)

An IPv6-only network (EnableIPv4 false) has no WEFT_NETWORK/WEFT_SUBNET lines: a file
carries the lines of one family or both, each family's pair complete.
"""

import ipaddress
from collections import namedtuple

from ..fsutil import write_atomic


class SubnetFileError(ValueError):
    """The file exists but is not a usable subnet file."""


# a namedtuple, not a dataclass: every standalone CNI call reads this file, and
# `dataclasses` (with the `inspect` it imports) would cost it ~8 ms of import
_LEASE_FIELDS = "network subnet mtu ipmasq ipv6_network ipv6_subnet ipv4_ipmasq ipv6_ipmasq"


class SubnetLease(namedtuple("SubnetLease", _LEASE_FIELDS, defaults=(None, False, None, None, None, None))):
    """network: IPv4Network (None on an IPv6-only network, with subnet); subnet: the
    node's IPv4Interface, with the gateway (.1) as address; ipv6_network, ipv6_subnet
    likewise; mtu: int or None; ipv4_ipmasq, ipv6_ipmasq: per-family overrides of
    ipmasq (None: as ipmasq says)."""

    __slots__ = ()

    def masquerades(self, version: int) -> bool:
        override = self.ipv4_ipmasq if version == 4 else self.ipv6_ipmasq
        return self.ipmasq if override is None else override

    def render(self) -> str:
        lines = []
        if self.network is not None:
            lines += [f"WEFT_NETWORK={self.network}", f"WEFT_SUBNET={self.subnet}"]
        if self.ipv6_network is not None:
            lines += [f"WEFT_IPV6_NETWORK={self.ipv6_network}", f"WEFT_IPV6_SUBNET={self.ipv6_subnet}"]
        if self.mtu is not None:
            lines.append(f"WEFT_MTU={self.mtu}")
        lines.append(f"WEFT_IPMASQ={'true' if self.ipmasq else 'false'}")
        for key, value in (("WEFT_IPV4_IPMASQ", self.ipv4_ipmasq), ("WEFT_IPV6_IPMASQ", self.ipv6_ipmasq)):
            if value is not None:
                lines.append(f"{key}={'true' if value else 'false'}")
        return "\n".join(lines) + "\n"


def parse(text: str, path: str = "<subnet file>") -> SubnetLease:
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SubnetFileError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        values[key.strip()] = value.strip()

    def get(key, convert, required=False):
        raw = values.get(key)
        if raw is None:
            if required:
                raise SubnetFileError(f"{path}: {key} is missing")
            return None
        try:
            return convert(raw)
        except ValueError as exc:
            raise SubnetFileError(f"{path}: {key}={raw!r} is invalid: {exc}") from None

    def boolean(raw):
        if raw.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return raw.lower() == "true"

    lease = SubnetLease(
        network=get("WEFT_NETWORK", ipaddress.IPv4Network, required="WEFT_IPV6_NETWORK" not in values),
        subnet=get("WEFT_SUBNET", ipaddress.IPv4Interface, required="WEFT_IPV6_NETWORK" not in values),
        mtu=get("WEFT_MTU", int),
        ipmasq=bool(get("WEFT_IPMASQ", boolean)),
        ipv6_network=get("WEFT_IPV6_NETWORK", ipaddress.IPv6Network),
        ipv6_subnet=get("WEFT_IPV6_SUBNET", ipaddress.IPv6Interface),
        ipv4_ipmasq=get("WEFT_IPV4_IPMASQ", boolean),
        ipv6_ipmasq=get("WEFT_IPV6_IPMASQ", boolean),
    )
    if (lease.ipv6_network is None) != (lease.ipv6_subnet is None):
        raise SubnetFileError(f"{path}: WEFT_IPV6_NETWORK and WEFT_IPV6_SUBNET go together")
    if (lease.network is None) != (lease.subnet is None):
        raise SubnetFileError(f"{path}: WEFT_NETWORK and WEFT_SUBNET go together")
    return lease


def read(path: str) -> SubnetLease:
    """Raises FileNotFoundError when absent, SubnetFileError when malformed."""
    with open(path, encoding="utf-8") as handle:
        return parse(handle.read(), path)


def write(path: str, lease: SubnetLease) -> None:
    """Atomic, durable replace (fsutil's policy), mode 0644."""
    write_atomic(path, lease.render(), mode=0o644, make_dirs=True)
