"""The shared desired-vs-actual reconcile for every backend (planning is pure).

For one network on one node, a Plan says what the kernel should hold: each usable
remote lease gets the entries its backend lists (base.py explains kinds, keys and
values).  `reconcile` reads back what this plan owns, removes stale entries, writes
missing or wrong ones (netlink replace) and returns a Drift; `apply_peer` and
`remove_peer` are the cheap single-lease paths for the watch.

Ownership: routes are ours when they carry proto WEFT_RTPROT and their destination
lies inside the plan's cluster network(s) (any interface, table main); when the
backend owns its devices' entries, every permanent neighbour and every FDB entry on
those devices is ours (keyed by (ifindex, address) and (ifindex, MAC): VXLAN has one
device per underlay family).  Nothing else is ever read as ours or removed.

Underlay families (the model, docs/configuration.md): a node has an IPv4 underlay
address, an IPv6 one or both.  underlay_route() says which underlay family carries
each inner (pod) family to one peer: when both nodes have both, each inner family
rides its own; when they share one, both ride that one; when they share none they
are not peers (NoCommonUnderlay: the overlay controller refuses the lease, so neither
node programs the other).

Partial reads: `read_state` and `reconcile_from` take `kinds`, a subset of the kinds
the plan owns (owned_kinds); only entries of those kinds are read, compared and
repaired.  A quiet reconcile pass reads `unnotified_kinds` this way (base.py:
NOTIFIED_KINDS), a full one everything.

Writes go neighbour, FDB, the backend's device entries (base.py), route; removals
the other way.  An unusable lease's
existing entries are left alone until it is fixed or gone.  Failures are never
skipped silently: they are collected per lease and raised as one OverlayError, which
carries the Drift of what did get done.
"""

from dataclasses import dataclass, field
from typing import Optional

from ..datapath.constants import WEFT_RTPROT
from ..datapath.errors import DatapathError
from ..datapath.underlay import Underlay
from .base import FDB, NEIGH, ROUTE, Device

WRITE_RANK = {NEIGH: 0, FDB: 1, ROUTE: 3}  # a backend's device kinds: 2


def write_rank(kind: str) -> int:
    return WRITE_RANK.get(kind, 2)


class NoCommonUnderlay(ValueError):
    """This node and a lease's node share no underlay family: they cannot be peers."""


def families_text(families) -> str:
    return " and ".join(f"IPv{v}" for v in sorted(families)) or "no"


def underlay_route(local_families, lease) -> dict:
    """{inner IP version: underlay IP version} for traffic to `lease`'s node (see the
    module doc); NoCommonUnderlay naming both sides' families when there is none."""
    theirs = {version for version, address in ((4, lease.public_ip), (6, lease.public_ipv6)) if address}
    common = set(local_families) & theirs
    if not common:
        raise NoCommonUnderlay(
            f"no common underlay family: this node has {families_text(local_families)} underlay, node "
            f"{lease.node_name or '?'} has {families_text(theirs)} ({lease.underlay_text}); the two are "
            "not peers (give one of them an address of the other's family: --public-ip/--public-ipv6)")
    if common == {4, 6}:
        return {4: 4, 6: 6}
    (only,) = common
    return {4: only, 6: only}


class OverlayError(Exception):
    """Programming failed for one or more leases; `errors` names each lease key,
    `drift` is what was done anyway."""

    def __init__(self, message: str, errors: Optional[list] = None, drift: "Drift" = None):
        self.errors = list(errors or [message])
        self.drift = drift
        super().__init__(message if errors is None else f"{message}: " + "; ".join(self.errors))


@dataclass
class Drift:
    added: int = 0
    removed: int = 0
    details: list = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


@dataclass(frozen=True)
class Plan:
    """What one network on this node should look like in the kernel.

    backend    the Backend instance (its .name and .config)
    local      this node's Lease (its subnets are never routed)
    networks   cluster networks: (IPv4Network,), (IPv4Network, IPv6Network) or (IPv6Network,)
    underlay   Underlay of the local public IPv4 address (None: no IPv4 underlay)
    device     the backend's Device (index 0: none); VXLAN: the one over IPv4
    underlay6  Underlay of the local public IPv6 address (None: no IPv6 underlay)
    peers      remote Leases (the local lease, if present, is ignored)
    device6    VXLAN's device over the IPv6 underlay (index 0: none)
    """

    backend: object
    local: object
    networks: tuple
    underlay: Optional[Underlay]
    device: Device = Device()
    underlay6: Optional[Underlay] = None
    peers: tuple = ()
    device6: Device = Device()

    @classmethod
    def for_network(cls, backend, config, local, underlay: Optional[Underlay], device: Device = Device(),
                    peers=(), underlay6: Optional[Underlay] = None, device6: Device = Device()) -> "Plan":
        """A Plan from a NetworkConfig (cni_plugin.subnet.lease)."""
        return cls(backend=backend, local=local, networks=config.networks, underlay=underlay, device=device,
                   underlay6=underlay6, peers=tuple(peers), device6=device6)

    @property
    def underlay_families(self) -> frozenset:
        return frozenset(v for v, u in ((4, self.underlay), (6, self.underlay6)) if u is not None)

    def underlay_of(self, version: int) -> Underlay:
        return self.underlay if version == 4 else self.underlay6

    @property
    def primary_underlay(self) -> Underlay:
        """The IPv4 underlay, else the IPv6 one (for names in messages)."""
        return self.underlay or self.underlay6

    def route(self, lease) -> dict:
        """{inner version: underlay version} to `lease` (underlay_route; NoCommonUnderlay)."""
        return underlay_route(self.underlay_families, lease)

    @staticmethod
    def peer_address(lease, version: int):
        """The lease's underlay address of one family."""
        return lease.public_ip if version == 4 else lease.public_ipv6

    @property
    def devices(self) -> tuple:
        """The backend's devices on this node (index set), the IPv4-underlay one first."""
        return tuple(d for d in (self.device, self.device6) if d.index)

    def inner_subnets(self, lease) -> list:
        """[(subnet, inner version)] of a lease that this network routes."""
        return [(s, s.version) for s in lease.subnets if s.version == 4 or self.ipv6]

    @property
    def ipv6(self) -> bool:
        return any(n.version == 6 for n in self.networks)

    def in_cluster(self, network) -> bool:
        return any(network.version == n.version and network.subnet_of(n) for n in self.networks)

    def oif_name(self, index: int) -> str:
        for device in self.devices:
            if index == device.index and device.name:
                return device.name
        for underlay in (self.underlay, self.underlay6):
            if underlay is not None and underlay.index == index:
                return underlay.name
        return f"if{index}"

    def direct_hop(self, lease, inner: int, underlay: int):
        """(peer address, underlay ifindex) when a subnet of family `inner` can be routed
        straight to the peer over underlay family `underlay` (the peer's address on the
        local underlay's network; an IPv4 subnet may go via an IPv6 next hop, never the
        reverse), else None."""
        local = self.underlay_of(underlay)
        address = self.peer_address(lease, underlay)
        if local is None or address is None or address not in local.network or (inner, underlay) == (6, 4):
            return None
        return address, local.index

    def reads_device(self) -> bool:
        return self.backend.owns_device_entries and bool(self.devices)

    def owned_kinds(self) -> frozenset:
        """Every kind of kernel entry this plan owns."""
        kinds = {ROUTE}
        if self.reads_device():
            kinds |= {NEIGH, FDB}
        if self.devices:
            kinds |= set(self.backend.DEVICE_KINDS)
        return frozenset(kinds)

    def unnotified_kinds(self) -> frozenset:
        """The kinds this plan owns that the kernel sends no change notification for:
        read on every reconcile pass."""
        return self.owned_kinds() - self.backend.NOTIFIED_KINDS

    def has_device_entries(self) -> bool:
        """The backend owns entries on its device (neighbours/FDB or its own kinds)."""
        return bool(self.devices) and (self.backend.owns_device_entries or bool(self.backend.DEVICE_KINDS))


# -- desired state (pure) -----------------------------------------------------

@dataclass
class Desired:
    """(kind, key) -> (value, lease key), plus what unusable leases protect."""

    entries: dict = field(default_factory=dict)
    protected: set = field(default_factory=set)  # (kind, key) of unusable leases: left alone
    protected_fdb_dsts: set = field(default_factory=set)
    errors: list = field(default_factory=list)

    def add(self, kind, key, value, lease_key):
        self.entries[(kind, key)] = (value, lease_key)


def describe_lease(lease) -> str:
    return f"lease {lease.key} (node {lease.node_name or '?'}, {lease.underlay_text})"


def is_local(plan: Plan, lease) -> bool:
    return lease.key == plan.local.key


def check_peer(plan: Plan, lease) -> None:
    """Raise ValueError naming what makes `lease` unusable for this plan."""
    if lease.backend_type != plan.backend.name:
        raise ValueError(f"backend {lease.backend_type}, but this network uses {plan.backend.name}")
    if lease.subnet is not None and not plan.in_cluster(lease.subnet):
        raise ValueError(f"subnet {lease.subnet} is outside the cluster network")
    if plan.ipv6 and lease.ipv6_subnet is not None and not plan.in_cluster(lease.ipv6_subnet):
        raise ValueError(f"IPv6 subnet {lease.ipv6_subnet} is outside the cluster network")
    plan.route(lease)  # NoCommonUnderlay
    plan.backend.check_peer(plan, lease)


def peer_entries(plan: Plan, lease) -> list:
    """[(kind, key, value)] for one remote lease, in write order; ValueError if unusable."""
    check_peer(plan, lease)
    return plan.backend.peer_entries(plan, lease)


def _protect(plan: Plan, desired: Desired, lease) -> None:
    for subnet in lease.subnets:
        desired.protected.add((ROUTE, subnet))
    for kind, key, _ in plan.backend.peer_owned(plan, lease):
        desired.protected.add((kind, key))
    desired.protected_fdb_dsts.update(lease.public_ips)


def desired_state(plan: Plan) -> Desired:
    desired = Desired()
    for lease in plan.peers:
        if is_local(plan, lease):
            continue
        try:
            entries = peer_entries(plan, lease)
        except ValueError as exc:
            desired.errors.append(f"{describe_lease(lease)}: {exc}")
            _protect(plan, desired, lease)
            continue
        for kind, key, value in entries:
            desired.add(kind, key, value, lease.key)
    if plan.devices:
        for kind, key, value in plan.backend.local_entries(plan):
            desired.add(kind, key, value, plan.local.key)
    return desired


# -- kernel state ---------------------------------------------------------------

def read_state(nl, plan: Plan, kinds=None) -> dict:
    """(kind, key) -> value of every kernel entry this plan owns (see module doc);
    kinds: only entries of these kinds (None: all)."""
    state = {}
    wanted = plan.owned_kinds() if kinds is None else plan.owned_kinds() & kinds
    if ROUTE in wanted:
        for version in sorted({n.version for n in plan.networks}):
            for route in nl.routes(version, proto=WEFT_RTPROT):
                if plan.in_cluster(route.dst):
                    state[(ROUTE, route.dst)] = (route.gateway, route.oif, route.onlink)
    for device in plan.devices if NEIGH in wanted else ():
        for ip, mac in nl.permanent_neighbours(device.index).items():
            state[(NEIGH, (device.index, ip))] = mac
    for device in plan.devices if FDB in wanted else ():
        for mac, (dst, permanent) in nl.fdb(device.index).items():
            # a learned entry is never equal to a desired value: rewritten
            state[(FDB, (device.index, mac))] = dst if permanent else ("not permanent", dst)
    if wanted & set(plan.backend.DEVICE_KINDS):
        state.update((entry, value) for entry, value in plan.backend.read_device_entries(nl, plan).items()
                     if entry[0] in wanted)
    return state


def _write(nl, plan: Plan, kind: str, key, value) -> None:
    if kind == NEIGH:
        nl.replace_neighbour(key[0], key[1], value)
    elif kind == FDB:
        nl.replace_fdb(key[0], key[1], value)
    elif kind == ROUTE:
        gateway, oif, onlink = value
        nl.replace_route(key, gateway, oif, onlink)
    else:
        plan.backend.write_device_entry(nl, plan, kind, key, value)


def _delete(nl, plan: Plan, kind: str, key, value) -> bool:
    """Delete one entry; False when it was already gone."""
    if kind == NEIGH:
        return nl.delete_neighbour(key[0], key[1])
    if kind == FDB:
        dst = value[1] if isinstance(value, tuple) else value
        return nl.delete_fdb(key[0], key[1], dst)
    if kind == ROUTE:
        return nl.delete_weft_route(key)  # by destination and weft's protocol only
    return plan.backend.delete_device_entry(nl, plan, kind, key, value)


def describe(plan: Plan, kind: str, key, value) -> str:
    if kind == ROUTE:
        gateway, oif, onlink = value
        via = f" via {gateway}" if gateway is not None else ""
        return f"route {key}{via} dev {plan.oif_name(oif)}{' onlink' if onlink else ''}"
    if kind == NEIGH:
        return f"neighbour {key[1]} lladdr {value} dev {plan.oif_name(key[0])}"
    if kind == FDB:
        return f"fdb {key[1]} dst {value} dev {plan.oif_name(key[0])}"
    return plan.backend.describe_device_entry(plan, kind, key, value)


# -- reconcile, apply, remove -------------------------------------------------------

def stale_entries(desired: Desired, actual: dict) -> list:
    out = []
    for (kind, key), value in actual.items():
        if (kind, key) in desired.entries or (kind, key) in desired.protected:
            continue
        if kind == FDB and value in desired.protected_fdb_dsts:
            continue
        out.append((kind, key, value))
    return out


def missing_entries(desired: Desired, actual: dict) -> list:
    """[(kind, key, value, lease key)] to write, in write order."""
    wrong = [(kind, key, value, lease_key) for (kind, key), (value, lease_key) in desired.entries.items()
             if actual.get((kind, key)) != value]
    return sorted(wrong, key=lambda entry: write_rank(entry[0]))  # stable: lease order kept


def _remove_stale(nl, plan: Plan, stale: list, drift: Drift, errors: list) -> None:
    for kind, key, value in sorted(stale, key=lambda entry: -write_rank(entry[0])):
        text = describe(plan, kind, key, value)
        try:
            if _delete(nl, plan, kind, key, value):
                drift.removed += 1
                drift.details.append(f"{text} was stale (no lease), removed")
        except DatapathError as exc:
            errors.append(f"cannot remove stale {text}: {exc}")


BATCH_MIN = 2  # missing entries from which they are written in batches (datapath/batch.py)


def _add_missing(nl, plan: Plan, missing: list, actual: dict, drift: Drift, errors: list) -> None:
    batch = nl.batch() if len(missing) >= BATCH_MIN and hasattr(nl, "batch") else None
    if batch is not None:
        _add_missing_batched(nl, batch, plan, missing, actual, drift, errors)
        return
    failed = set()  # lease keys with a failed entry: their later entries (the route) wait
    for kind, key, value, lease_key in missing:
        if lease_key in failed:
            continue
        try:
            _write(nl, plan, kind, key, value)
        except DatapathError as exc:
            _written(plan, (kind, key, value, lease_key), exc, actual, drift, errors, failed)
            continue
        _written(plan, (kind, key, value, lease_key), None, actual, drift, errors, failed)


def _written(plan: Plan, entry, error, actual: dict, drift: Drift, errors: list, failed: set) -> None:
    """Account for one write: a failure names the lease (its later entries then wait)."""
    kind, key, value, lease_key = entry
    text = describe(plan, kind, key, value)
    if error is not None:
        failed.add(lease_key)
        errors.append(f"lease {lease_key}: cannot program {text}: {error}")
        return
    drift.added += 1
    old = actual.get((kind, key))
    drift.details.append(f"{text} was missing" if old is None else f"{text} was wrong (had {old})")


def _add_missing_batched(nl, batch, plan: Plan, missing: list, actual: dict, drift: Drift, errors: list) -> None:
    """_add_missing in one batch per kind, in write order: every lease's neighbour, then
    the FDB entries of the leases whose neighbour went in, then their routes.  A
    backend's own device entries (e.g. WireGuard peers) are written one by one."""
    failed = set()
    for kind in sorted({entry[0] for entry in missing}, key=write_rank):
        todo = [entry for entry in missing if entry[0] == kind and entry[3] not in failed]
        if not todo:
            continue
        if kind not in (NEIGH, FDB, ROUTE):
            for entry in todo:
                try:
                    _write(nl, plan, *entry[:3])
                except DatapathError as exc:
                    _written(plan, entry, exc, actual, drift, errors, failed)
                    continue
                _written(plan, entry, None, actual, drift, errors, failed)
            continue
        if kind == ROUTE:
            groups = [(todo, batch.replace_routes([(key, *value) for _, key, value, _ in todo]))]
        else:  # neighbours and FDB entries: one batch per device
            send = batch.replace_neighbours if kind == NEIGH else batch.replace_fdbs
            groups = []
            for index in sorted({entry[1][0] for entry in todo}):
                group = [entry for entry in todo if entry[1][0] == index]
                groups.append((group, send(index, [(key[1], value) for _, key, value, _ in group])))
        for group, failures in groups:
            for position, entry in enumerate(group):
                _written(plan, entry, failures.get(position), actual, drift, errors, failed)


def reconcile(nl, plan: Plan) -> Drift:
    """Make the kernel match `plan` in both directions; the Drift says what was repaired.
    Raises OverlayError (with .drift) if any lease could not be programmed."""
    return reconcile_from(nl, plan, read_state(nl, plan))


def reconcile_from(nl, plan: Plan, actual: dict, unsettled=frozenset(), kinds=None, desired=None) -> Drift:
    """reconcile() against `actual`, a read_state() taken a moment ago (e.g. by another
    thread while watch events kept being applied).  unsettled: lease keys programmed or
    removed since that read; their missing entries are the watch path's business (they
    would only show up as false drift).  Stale entries are deleted either way: one that
    a later event already removed is simply gone (not counted).  kinds: `actual` holds
    only entries of these kinds (read_state's), so only they are compared.  desired:
    desired_state(plan), when the caller kept it (it is not changed here)."""
    desired = desired_state(plan) if desired is None else desired
    if kinds is not None:
        desired = Desired({entry: value for entry, value in desired.entries.items() if entry[0] in kinds},
                          desired.protected, desired.protected_fdb_dsts, desired.errors)
    drift = Drift()
    errors = list(desired.errors)
    _remove_stale(nl, plan, stale_entries(desired, actual), drift, errors)
    missing = [entry for entry in missing_entries(desired, actual) if entry[3] not in unsettled]
    _add_missing(nl, plan, missing, actual, drift, errors)
    if errors:
        raise OverlayError(f"network datapath {plan.device.name or plan.device6.name or plan.primary_underlay.name}: "
                           f"{len(errors)} problem(s)", errors, drift)
    return drift


def apply_peer(nl, plan: Plan, lease, previous=None) -> Drift:
    """Program one remote lease (idempotent replaces, no reads); Drift.added counts writes.
    previous: the lease's last known version; what it owned and the new one does not
    (e.g. a rotated WireGuard key, a new VtepMAC) is removed after the writes."""
    drift = Drift()
    if is_local(plan, lease):
        return drift
    try:
        entries = peer_entries(plan, lease)
    except ValueError as exc:
        raise OverlayError(f"{describe_lease(lease)}: {exc}") from None
    for kind, key, value in entries:
        text = describe(plan, kind, key, value)
        try:
            _write(nl, plan, kind, key, value)
        except DatapathError as exc:
            raise OverlayError(f"lease {lease.key}: cannot program {text}: {exc}", drift=drift) from None
        drift.added += 1
        drift.details.append(f"programmed {text}")
    if previous is not None and plan.has_device_entries():
        kept = {(kind, key) for kind, key, _ in entries}
        superseded = [e for e in plan.backend.peer_owned(plan, previous) if (e[0], e[1]) not in kept]
        _remove_entries(nl, plan, lease, superseded, drift)
    return drift


def remove_peer(nl, plan: Plan, lease) -> Drift:
    """Remove what a remote lease had: its routes (by destination and weft's protocol, so
    a route that moved to the underlay with DirectRouting goes too), then what its
    backend owns on the device (e.g. FDB while it still points at the lease, neighbours,
    WireGuard peers)."""
    drift = Drift()
    if is_local(plan, lease):
        return drift
    entries = [(ROUTE, s, None) for s in lease.subnets]
    if plan.has_device_entries():
        entries += plan.backend.peer_owned(plan, lease)
    _remove_entries(nl, plan, lease, entries, drift)
    return drift


def _remove_entries(nl, plan: Plan, lease, entries: list, drift: Drift) -> None:
    for kind, key, value in entries:
        text = f"{kind} {key}" + (f" ({value})" if value is not None else "")
        try:
            if _delete(nl, plan, kind, key, value):
                drift.removed += 1
                drift.details.append(f"removed {text}")
        except DatapathError as exc:
            raise OverlayError(f"lease {lease.key}: cannot remove {text}: {exc}", drift=drift) from None
