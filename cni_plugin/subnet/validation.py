"""Lease validation: the one place that decides which leases of a network may be programmed.

Used by the lease policy at acquisition, by the overlay controller on every watch event
and at every full listing (reconcile), and by `weftctl network set` to find the leases a
new config would contradict.  Pure: rows in, a verdict out; no I/O.

A lease is valid when
  - its value parses (Lease.from_json);
  - its subnet lies inside the network's Network and has its SubnetLen (likewise its
    IPv6Subnet, when present, inside IPv6Network with IPv6SubnetLen);
  - its PublicIP is a plausible unicast underlay address: not unspecified, loopback,
    multicast, broadcast, link-local, reserved (240/4, 0/8), nor inside the cluster
    Network itself (and PublicIPv6 likewise);
  - its BackendType is the network's, and the backend accepts its BackendData
    (Backend.validate_peer_data, e.g. VXLAN: a unicast VTEP MAC and the network's VNI);
  - it overlaps no other valid lease that is older.  "Older" is the etcd create revision
    (ties, which etcd never produces, by key), so every node reaches the same verdict
    from the same rows whatever order they arrived in.

netaddr is imported here and by the backends' validate_peer_data; neither is reachable
from the per-pod forwarder (weft/weft-ipam never validate leases).
"""

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

import netaddr

from ..backends.base import BackendDataError
from .lease import ConfigError, Lease, NetworkConfig, parse_subnet_key

# reasons, as they appear in metrics (label `reason`) and in the status file
UNREADABLE = "unreadable"
OUTSIDE_NETWORK = "outside-network"
SUBNET_LENGTH = "subnet-length"
OVERLAP = "overlap"
PUBLIC_IP = "public-ip"
BACKEND_TYPE = "backend-type"
BACKEND_DATA = "backend-data"
REASONS = (UNREADABLE, OUTSIDE_NETWORK, SUBNET_LENGTH, OVERLAP, PUBLIC_IP, BACKEND_TYPE, BACKEND_DATA)

_RESERVED_V4 = netaddr.IPSet(["0.0.0.0/8", "240.0.0.0/4"])


@dataclass(frozen=True)
class Refusal:
    key: str
    reason: str            # one of REASONS
    detail: str            # names the key, the value and why
    node: str = ""         # NodeName of the lease, when readable

    def as_status(self) -> dict:
        return {"key": self.key, "node": self.node, "reason": self.reason, "detail": self.detail}


@dataclass
class Verdict:
    valid: dict = field(default_factory=dict)     # key -> Lease, oldest first
    refused: dict = field(default_factory=dict)   # key -> Refusal
    created: dict = field(default_factory=dict)   # key -> create revision (every row)


def address_problem(address, cluster: Optional[ipaddress._BaseNetwork] = None) -> Optional[str]:
    """Why `address` cannot be a node's underlay address, or None."""
    ip = netaddr.IPAddress(str(address))
    if ip.value == 0:
        return "is unspecified"
    if ip.version == 4 and ip == netaddr.IPAddress("255.255.255.255"):
        return "is the broadcast address"
    if ip.is_loopback():
        return "is a loopback address"
    if ip.is_multicast():
        return "is a multicast address"
    if ip.is_link_local():
        return "is link-local"
    if ip.version == 4 and ip in _RESERVED_V4:
        return "is in a reserved range (0.0.0.0/8, 240.0.0.0/4)"
    if cluster is not None and ipaddress.ip_address(str(address)) in cluster:
        return f"lies inside the cluster network {cluster}"
    return None


def _subnet_problem(lease: Lease, config: NetworkConfig) -> Optional[tuple]:
    network, length = config.network, config.subnet_len
    if not lease.subnet.subnet_of(network):
        return OUTSIDE_NETWORK, f"subnet {lease.subnet} is outside Network {network}"
    if lease.subnet.prefixlen != length:
        return SUBNET_LENGTH, f"subnet {lease.subnet} is a /{lease.subnet.prefixlen}, but SubnetLen is {length}"
    if lease.ipv6_subnet is not None:
        v6 = config.ipv6_network
        if v6 is None:
            return OUTSIDE_NETWORK, f"IPv6Subnet {lease.ipv6_subnet}, but the network has no IPv6Network"
        if not lease.ipv6_subnet.subnet_of(v6):
            return OUTSIDE_NETWORK, f"IPv6Subnet {lease.ipv6_subnet} is outside IPv6Network {v6}"
        if lease.ipv6_subnet.prefixlen != config.ipv6_subnet_len:
            return SUBNET_LENGTH, (f"IPv6Subnet {lease.ipv6_subnet} is a /{lease.ipv6_subnet.prefixlen}, "
                                   f"but IPv6SubnetLen is {config.ipv6_subnet_len}")
    return None


def check_lease(lease: Lease, config: NetworkConfig) -> Optional[tuple]:
    """(reason, detail) when the lease alone is unusable in this network, else None."""
    problem = _subnet_problem(lease, config)
    if problem:
        return problem
    why = address_problem(lease.public_ip, config.network)
    if why:
        return PUBLIC_IP, f"PublicIP {lease.public_ip} {why}"
    if lease.public_ipv6 is not None:
        why = address_problem(lease.public_ipv6, config.ipv6_network)
        if why:
            return PUBLIC_IP, f"PublicIPv6 {lease.public_ipv6} {why}"
    if lease.backend_type != config.backend_type:
        return BACKEND_TYPE, f"BackendType {lease.backend_type!r}, but the network uses {config.backend_type!r}"
    try:
        config.backend_class.validate_peer_data(config.backend, lease.backend_data)
    except BackendDataError as exc:
        return BACKEND_DATA, f"BackendData: {exc}"
    return None


def validate(config: NetworkConfig, rows) -> Verdict:
    """rows: LeaseRow-like (key, value, lease id, create revision) -> Verdict."""
    verdict = Verdict()
    candidates = []
    for key, value, _lease_id, created in rows:
        verdict.created[key] = created
        try:
            lease = Lease.from_json(key, value)
        except ConfigError as exc:
            verdict.refused[key] = Refusal(key, UNREADABLE, str(exc))
            continue
        problem = check_lease(lease, config)
        if problem:
            verdict.refused[key] = Refusal(key, problem[0], f"lease {key}: {problem[1]}", lease.node_name)
            continue
        candidates.append((created, key, lease))
    taken = netaddr.IPSet()
    for created, key, lease in sorted(candidates, key=lambda c: (c[0], c[1])):
        mine = netaddr.IPSet([str(s) for s in (lease.subnet, lease.ipv6_subnet) if s is not None])
        if not taken.isdisjoint(mine):
            older = next(k for k, other in verdict.valid.items() if _overlap(other, lease))
            verdict.refused[key] = Refusal(
                key, OVERLAP, f"lease {key} of node {lease.node_name or '?'} overlaps the older lease "
                f"{older} of node {verdict.valid[older].node_name} (created at revision "
                f"{verdict.created[older]}, this one at {created}); the older one wins", lease.node_name)
            continue
        taken.update(mine)
        verdict.valid[key] = lease
    return verdict


def _overlap(a: Lease, b: Lease) -> bool:
    if a.subnet.overlaps(b.subnet):
        return True
    return a.ipv6_subnet is not None and b.ipv6_subnet is not None and a.ipv6_subnet.overlaps(b.ipv6_subnet)


def occupied(rows) -> netaddr.IPSet:
    """Address space no new lease may touch: every key's subnet, valid or not (an
    unreadable or refused lease still names space someone may route)."""
    space = netaddr.IPSet()
    for row in rows:
        try:
            space.add(str(parse_subnet_key(row[0])))
        except ConfigError:
            continue
    return space


def is_free(space: netaddr.IPSet, subnet: ipaddress.IPv4Network) -> bool:
    return space.isdisjoint(netaddr.IPSet([str(subnet)]))


def contradicted(old: Optional[NetworkConfig], new: NetworkConfig, rows) -> list:
    """Refusals of leases that are valid under `old` (or readable, without one) but refused
    under `new`: what a config change would orphan."""
    before = validate(old, rows).valid if old is not None else None
    after = validate(new, rows)
    out = []
    for key, refusal in sorted(after.refused.items()):
        if before is None and refusal.reason == UNREADABLE:
            continue
        if before is not None and key not in before:
            continue
        out.append(refusal)
    return out


# config keys a running agent applies live; every other change needs a restart (and,
# when leases contradict it, weftctl network set --force-migrate)
LIVE_FIELDS = (("MTU", "mtu"), ("IPMasq", "ip_masq"), ("SubnetMin", "subnet_min"), ("SubnetMax", "subnet_max"))
RESTART_FIELDS = (("Network", "network"), ("SubnetLen", "subnet_len"), ("EnableIPv6", "enable_ipv6"),
                  ("IPv6Network", "ipv6_network"), ("IPv6SubnetLen", "ipv6_subnet_len"),
                  ("Backend.Type", "backend_type"), ("Backend", "backend"))


def config_change(old: NetworkConfig, new: NetworkConfig) -> tuple:
    """([live-safe changes], [changes needing a restart]), each "Key: old -> new"."""
    def changes(fields):
        out = []
        for label, attr in fields:
            before, after = getattr(old, attr), getattr(new, attr)
            if before != after:
                out.append(f"{label}: {_shown(before)} -> {_shown(after)}")
        return out

    unsafe = changes(RESTART_FIELDS)
    if old.backend_type != new.backend_type:  # the Backend objects differ anyway: say it once
        unsafe = [c for c in unsafe if not c.startswith("Backend:")]
    return changes(LIVE_FIELDS), unsafe


def _shown(value) -> str:
    if value is None:
        return "unset"
    if hasattr(value, "__dataclass_fields__"):
        return ", ".join(f"{k}={getattr(value, k)}" for k in value.__dataclass_fields__)
    return str(value)
