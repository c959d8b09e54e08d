"""This node's identity on the underlay: name, node ID, public IP, per-network VTEP MACs.

The node ID is made once (random, 128 bits) and kept in <state-dir>/node-id: it tells a
restart of this agent (same state dir: adopts its lease) from another agent started
under the same --node-name (a collision: fatal).
"""

import ipaddress
import os
import re
import secrets
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
    node_id: str = ""
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
            from ..subnet.validation import address_problem

            why = address_problem(public_ip)
            if why:
                raise NodeError(f"public IP {public_ip} {why}: other nodes would refuse this node's "
                                "leases; fix --public-ip or --iface")
            try:
                underlay.interface_of_ip(nl, public_ip)
            except DatapathError as exc:
                raise NodeError(f"public IP {public_ip} is not on any interface of this node ({exc}); "
                                "fix --public-ip or --iface") from None
        return cls(name=args.node_name, public_ip=public_ip, state_dir=args.state_dir,
                   node_id=node_id(args.state_dir), run_dir=args.run_dir)

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


_NODE_ID = re.compile(r"^[0-9a-f]{32}$")


def node_id(state_dir: str) -> str:
    """This agent's ID from <state-dir>/node-id, made on first use; NodeError when the
    file holds something else (never silently replaced: that would orphan our leases)."""
    path = os.path.join(state_dir, "node-id")
    try:
        with open(path) as handle:
            value = handle.read().strip()
    except FileNotFoundError:
        value = secrets.token_hex(16)
        try:
            write_atomic(path, value + "\n", mode=0o644, make_dirs=True)
        except OSError as exc:
            raise NodeError(f"cannot write the node ID {path}: {exc.strerror}; check --state-dir") from None
        return value
    except OSError as exc:
        raise NodeError(f"cannot read the node ID {path}: {exc.strerror}; check --state-dir") from None
    if not _NODE_ID.match(value):
        raise NodeError(f"{path} holds {value[:40]!r}, not a node ID (32 hex digits); restore it, or "
                        "delete it to make this agent a new identity (its old leases then collide)")
    return value
