"""This node's identity on the underlay: name, node ID, public IPv4 and/or IPv6, per-network VTEP MACs.

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
    public_ip: Optional[ipaddress.IPv4Address]  # at least one of the two is set
    state_dir: str
    public_ipv6: Optional[ipaddress.IPv6Address] = None
    node_id: str = ""
    run_dir: str = ""  # --run-dir: backends keep runtime sockets below it (e.g. wireguard-go's)

    @property
    def underlay_text(self) -> str:
        return ",".join(str(a) for a in (self.public_ip, self.public_ipv6) if a is not None)

    @classmethod
    def discover(cls, args) -> "NodeIdentity":
        """The underlay addresses from --public-ip / --public-ipv6, the missing ones from
        --iface when it is given; with neither address flag, both families from --iface
        or else from each family's default route.  A node needs one family at least."""
        from ..datapath import underlay
        from ..datapath.errors import DatapathError
        from ..datapath.netlink import open_agent

        given = {4: _flag_address(args.public_ip, "--public-ip", ipaddress.IPv4Address),
                 6: _flag_address(getattr(args, "public_ipv6", None), "--public-ipv6", ipaddress.IPv6Address)}
        with open_agent() as nl:
            found = dict(given)
            if args.iface or not any(given.values()):
                try:
                    discovered = underlay.discover(nl, args.iface)
                except DatapathError as exc:
                    raise NodeError(str(exc)) from None
                for version, address in zip((4, 6), discovered):
                    found[version] = found[version] or address
            for version, address in found.items():
                if address is not None:
                    _check_underlay(nl, address, "--public-ip" if version == 4 else "--public-ipv6")
        return cls(name=args.node_name, public_ip=found[4], public_ipv6=found[6], state_dir=args.state_dir,
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


def _flag_address(value, flag: str, kind):
    if not value:
        return None
    try:
        return kind(value)
    except ValueError:
        raise NodeError(f"{flag} {value!r} is not an IPv{4 if kind is ipaddress.IPv4Address else 6} address") \
            from None


def _check_underlay(nl, address, flag: str) -> None:
    """NodeError when `address` cannot be this node's underlay address."""
    from ..datapath import underlay
    from ..datapath.errors import DatapathError
    from ..subnet.validation import address_problem

    why = address_problem(address)
    if why:
        raise NodeError(f"public IP {address} {why}: other nodes would refuse this node's leases; "
                        f"fix {flag} or --iface")
    try:
        underlay.interface_of_ip(nl, address)
    except DatapathError as exc:
        raise NodeError(f"public IP {address} is not on any interface of this node ({exc}); "
                        f"fix {flag} or --iface") from None


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
