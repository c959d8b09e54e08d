"""This node's identity on the underlay: name, public IP, per-network VTEP MACs."""

import ipaddress
import os
import secrets
from dataclasses import dataclass
from typing import Optional


class NodeError(Exception):
    """The node's underlay cannot be determined; the message says which flag to set."""


def _random_mac() -> str:
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] & 0xFE) | 0x02  # unicast, locally administered
    return ":".join(f"{b:02x}" for b in octets)


@dataclass
class NodeIdentity:
    name: str
    public_ip: ipaddress.IPv4Address
    state_dir: str
    public_ipv6: Optional[ipaddress.IPv6Address] = None

    @classmethod
    def discover(cls, args) -> "NodeIdentity":
        from ..datapath import overlay
        from ..datapath.netns import open_host

        with open_host() as ipr:
            if args.public_ip:
                try:
                    public_ip = ipaddress.IPv4Address(args.public_ip)
                except ValueError:
                    raise NodeError(f"--public-ip {args.public_ip!r} is not an IPv4 address") from None
            else:
                public_ip = cls._address_of(ipr, overlay, args.iface)
            try:
                overlay.interface_of_ip(ipr, public_ip)
            except overlay.OverlayError as exc:
                raise NodeError(f"public IP {public_ip} is not on any interface of this node ({exc}); "
                                "fix --public-ip or --iface") from None
        return cls(name=args.node_name, public_ip=public_ip, state_dir=args.state_dir)

    @staticmethod
    def _address_of(ipr, overlay, iface):
        if iface:
            found = ipr.link_lookup(ifname=iface)
            if not found:
                raise NodeError(f"--iface {iface} does not exist on this node")
            index = found[0]
        else:
            try:
                index = overlay.default_route_interface(ipr)
            except overlay.OverlayError:
                raise NodeError("no default route to pick the underlay from: set --public-ip or --iface") from None
        for msg in ipr.addr("dump", index=index, family=2):
            if msg.get("scope") == 0:
                return ipaddress.IPv4Address(msg.get("IFA_ADDRESS"))
        raise NodeError(f"interface #{index} has no global IPv4 address: set --public-ip")

    def vtep_mac(self, network: str) -> str:
        """Stable across restarts: made once, kept in <state-dir>/<network>/vtep-mac."""
        path = os.path.join(self.state_dir, network, "vtep-mac")
        try:
            with open(path) as handle:
                mac = handle.read().strip().lower()
            if len(mac) == 17:
                return mac
        except OSError:
            pass
        mac = _random_mac()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as handle:
            handle.write(mac + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.rename(path + ".tmp", path)
        return mac
