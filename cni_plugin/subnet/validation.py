"""Lease validation: the one place that decides which leases of a network may be programmed.

Used by the lease policy at acquisition, by the overlay controller on every watch event
and at every full listing (reconcile), and by `weftctl network set` to find the leases a
new config would contradict.  Pure: rows in, a verdict out; no I/O.

A lease is valid when
  - its value parses (Lease.from_json);
  - its subnet lies inside the network's Network and has its SubnetLen (likewise its
    IPv6Subnet, when present, inside IPv6Network with IPv6SubnetLen); on an IPv6-only
    network (EnableIPv4 false) its key is an IPv6 subnet and it has no IPv4 one, on
    any other network its key is an IPv4 subnet;
  - it carries an underlay address (PublicIP, PublicIPv6 or both), and each is a
    plausible unicast underlay address: not unspecified, loopback, multicast,
    broadcast, link-local, reserved (240/4, 0/8), nor inside the cluster Network
    itself; PublicIPv6 likewise (not ::, ::1, ff00::/8, fe80::/10, an IPv4-mapped
    ::ffff:a.b.c.d, nor inside IPv6Network);
  - its BackendType is the network's, and the backend accepts its BackendData
    (Backend.validate_peer_data, e.g. VXLAN: a unicast VTEP MAC and the network's VNI);
  - it overlaps no other valid lease that is older.  "Older" is the etcd create revision
    (ties, which etcd never produces, by key), so every node reaches the same verdict
    from the same rows whatever order they arrived in.

netaddr is imported here and by the backends' validate_peer_data; neither is reachable
from the per-pod forwarder (weft/weft-ipam never validate leases).
"""

import ipaddress
import json
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
# not a property of the lease alone: this node and the lease's node share no underlay
# family (agent/controllers/overlay.py judges it per node; the other node refuses us too)
NO_COMMON_UNDERLAY = "no-common-underlay"
BACKEND_TYPE = "backend-type"
BACKEND_DATA = "backend-data"
REASONS = (UNREADABLE, OUTSIDE_NETWORK, SUBNET_LENGTH, OVERLAP, PUBLIC_IP, BACKEND_TYPE, BACKEND_DATA,
           NO_COMMON_UNDERLAY)



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
    if ip.version == 4 and (ip.value >> 24 == 0 or ip.value >> 28 == 0xF):
        return "is in a reserved range (0.0.0.0/8, 240.0.0.0/4)"
    if ip.version == 6 and (ip.is_ipv4_mapped() or ip.is_ipv4_compat()):
        return "is an IPv4-mapped or IPv4-compatible address (give the IPv4 address as PublicIP)"
    if cluster is not None and ipaddress.ip_address(str(address)) in cluster:
        return f"lies inside the cluster network {cluster}"
    return None


def _subnet_problem(lease: Lease, config: NetworkConfig) -> Optional[tuple]:
    if lease.subnet is None and config.enable_ipv4:
        return OUTSIDE_NETWORK, (f"IPv6-only lease {lease.key}, but the network carries IPv4 "
                                 f"(Network {config.network}); its keys are IPv4 subnets")
    if lease.subnet is not None:
        network, length = config.network, config.subnet_len
        if network is None:
            return OUTSIDE_NETWORK, (f"subnet {lease.subnet}, but the network is IPv6-only (EnableIPv4 false); "
                                     f"its keys are IPv6 subnets of IPv6Network {config.ipv6_network}")
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
    if lease.public_ip is not None:
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


class PrefixIndex:
    """Prefixes added so far, answering "does this prefix overlap any of them" in at most
    one lookup per prefix length (a prefix overlaps another iff one contains the other)."""

    def __init__(self):
        self.exact = set()      # (version, length, leading bits) of every prefix added
        self.inside = set()     # the same for every proper ancestor of an added prefix

    @staticmethod
    def _keys(net):
        """(version, length, leading bits) of net and of each of its ancestors, net first."""
        value, bits, version = int(net.network_address), net.max_prefixlen, net.version
        return [(version, length, value >> (bits - length)) for length in range(net.prefixlen, -1, -1)]

    def overlaps(self, net) -> bool:
        keys = self._keys(net)
        if keys[0] in self.exact or keys[0] in self.inside:
            return True   # the same prefix, or one inside it
        return not self.exact.isdisjoint(keys[1:])  # one that contains it

    def add(self, net) -> None:
        keys = self._keys(net)
        self.exact.add(keys[0])
        self.inside.update(keys[1:])


def _judge_row(config, key, value):
    """("ok", Lease) or ("refused", Refusal) for one row alone (cacheable by key, value)."""
    try:
        lease = Lease.from_json(key, value)
    except ConfigError as exc:
        return "refused", Refusal(key, UNREADABLE, str(exc))
    problem = check_lease(lease, config)
    if problem:
        return "refused", Refusal(key, problem[0], f"lease {key}: {problem[1]}", lease.node_name)
    return "ok", lease


def validate(config: NetworkConfig, rows, cache: Optional[dict] = None) -> Verdict:
    """rows: LeaseRow-like (key, value, lease id, create revision) -> Verdict.

    cache: a dict the caller keeps between calls for one config (clear it when the config
    changes); it holds each (key, value)'s own checks, so a watch event costs the
    overlap pass only."""
    verdict = Verdict()
    candidates = []
    cache = {} if cache is None else cache
    for key, value, _lease_id, created in rows:
        verdict.created[key] = created
        judged = cache.get((key, value))
        if judged is None:
            judged = cache[(key, value)] = _judge_row(config, key, value)
        if judged[0] == "refused":
            verdict.refused[key] = judged[1]
        else:
            candidates.append((created, key, judged[1]))
    taken = PrefixIndex()
    for created, key, lease in sorted(candidates, key=lambda c: (c[0], c[1])):
        mine = lease.subnets
        if any(taken.overlaps(s) for s in mine):
            older = next(k for k, other in verdict.valid.items() if leases_overlap(other, lease))
            verdict.refused[key] = Refusal(
                key, OVERLAP, f"lease {key} of node {lease.node_name or '?'} overlaps the older lease "
                f"{older} of node {verdict.valid[older].node_name} (created at revision "
                f"{verdict.created[older]}, this one at {created}); the older one wins", lease.node_name)
            continue
        for subnet in mine:
            taken.add(subnet)
        verdict.valid[key] = lease
    return verdict


def leases_overlap(a: Lease, b: Lease) -> bool:
    """Whether two leases share any address (IPv4 or IPv6 subnet)."""
    return any(x.version == y.version and x.overlaps(y) for x in a.subnets for y in b.subnets)


def occupied(rows) -> netaddr.IPSet:
    """Address space no new lease may touch: every key's subnet, valid or not (an
    unreadable or refused lease still names space someone may route), and every readable
    IPv6Subnet (a dual-stack lease left over on a network made IPv6-only keeps its space)."""
    blocks = []
    for row in rows:
        try:
            blocks.append(str(parse_subnet_key(row[0])))
        except ConfigError:
            continue
        v6 = _ipv6_subnet_of(row[1])
        if v6:
            blocks.append(v6)
    return netaddr.IPSet(blocks)


def _ipv6_subnet_of(value) -> Optional[str]:
    """The IPv6Subnet a lease value names, when it names a valid one."""
    try:
        text = json.loads(value).get("IPv6Subnet")
        return str(ipaddress.IPv6Network(text)) if isinstance(text, str) else None
    except (ValueError, TypeError, AttributeError):
        return None


def is_free(space: netaddr.IPSet, subnet) -> bool:
    return space.isdisjoint(netaddr.IPSet([str(subnet)]))


def free_blocks(space: netaddr.IPSet, first, last) -> list:
    """[(free CIDR block, how many /len subnets it holds)] between first and last (same
    length and family) that `space` does not touch: one set difference over the whole range."""
    length = first.prefixlen
    span = netaddr.IPSet(netaddr.IPRange(str(first.network_address), str(last.broadcast_address)))
    return [(block, 1 << (length - block.prefixlen))
            for block in (span - space).iter_cidrs() if block.prefixlen <= length]


def nth_free(blocks: list, index: int, length: int):
    """The index-th free /length subnet of free_blocks()' answer (IPv4Network or IPv6Network)."""
    for block, count in blocks:
        if index < count:
            bits = 32 if block.version == 4 else 128
            return ipaddress.ip_network((int(block.first) + (index << (bits - length)), length))
        index -= count
    raise IndexError(index)


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
LIVE_FIELDS = (("MTU", "mtu"), ("IPMasq", "ip_masq"), ("IPv4Masq", "ipv4_masq"), ("IPv6Masq", "ipv6_masq"),
               ("SubnetMin", "subnet_min"), ("SubnetMax", "subnet_max"),
               ("IPv6SubnetMin", "ipv6_subnet_min"), ("IPv6SubnetMax", "ipv6_subnet_max"),
               ("ControlPlaneAccess", "control_plane_access"), ("FlowLog", "flow_log"))
RESTART_FIELDS = (("Network", "network"), ("SubnetLen", "subnet_len"), ("EnableIPv4", "enable_ipv4"),
                  ("EnableIPv6", "enable_ipv6"),
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
    if isinstance(value, tuple):  # ControlPlaneAccess
        return "[" + ", ".join(map(str, value)) + "]"
    if hasattr(value, "__dataclass_fields__"):
        return ", ".join(f"{k}={getattr(value, k)}" for k in value.__dataclass_fields__)
    return str(value)
