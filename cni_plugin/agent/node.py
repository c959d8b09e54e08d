"""This node's identity on the underlay: name, public IP, per-network VTEP MACs."""

import ipaddress
import os
from dataclasses import dataclass
from typing import Optional

from ..datapath.mac import random_mac
from ..fsutil import write_atomic


class NodeError(Exception):
    """The node's underlay cannot be determined; the message says which flag to set."""


@dataclass
class NodeIdentity:
    name: str
    public_ip: ipaddress.IPv4Address
    state_dir: str
    public_ipv6: Optional[ipaddress.IPv6Address] = None
    run_dir: str = ""  # --run-dir: backends keep runtime sockets below it (e.g. wireguard-go's)

    @classmethod
    def discover(cls, args) -> "NodeIdentity":
        from ..datapath import underlay
        from ..datapath.errors import DatapathError
        from ..datapath.netlink import open_agent

        with open_agent() as nl:
            if args.public_ip:
                try:
                    public_ip = ipaddress.IPv4Address(args.public_ip)
                except ValueError:
                    raise NodeError(f"--public-ip {args.public_ip!r} is not an IPv4 address") from None
            else:
                try:
                    public_ip = underlay.public_ipv4(nl, args.iface)
                except DatapathError as exc:
                    raise NodeError(str(exc)) from None
            try:
                underlay.interface_of_ip(nl, public_ip)
            except DatapathError as exc:
                raise NodeError(f"public IP {public_ip} is not on any interface of this node ({exc}); "
                                "fix --public-ip or --iface") from None
        return cls(name=args.node_name, public_ip=public_ip, state_dir=args.state_dir, run_dir=args.run_dir)

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
        mac = random_mac()
        write_atomic(path, mac + "\n", mode=0o644, make_dirs=True)
        return mac
