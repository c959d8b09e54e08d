"""Peer programming for one network on one node: VXLAN and host-gw (as flannel does it).

Per remote lease, backend "vxlan" (device weft.<VNI>, see vxlan.py):
  1. permanent neighbour  remote .0 -> VtepMAC              on the device
  2. permanent FDB entry  VtepMAC -> remote PublicIP        on the device (NTF_SELF)
  3. route                remote subnet via remote .0 dev weft.<VNI> onlink
and for a dual-stack lease the neighbour <v6subnet>:: -> VtepMAC and the route
<v6subnet> via <v6subnet>:: onlink on the same device (IPv4 underlay).  With
DirectRouting, a remote whose PublicIP lies in the local underlay interface's network
gets a plain route (subnet via PublicIP dev <underlay>) and no neighbour/FDB.
Backend "host-gw": always subnet via PublicIP dev <underlay>; the remote must share the
underlay network.  Removal goes the other way: route, FDB, neighbour.

Ownership: routes are weft's when they carry proto WEFT_RTPROT and their destination
lies inside the plan's cluster network(s) (any interface, table main); every permanent
neighbour and every FDB entry on the VXLAN device is weft's (the device is).  Nothing
else is ever read as ours or removed.

`reconcile` reads the kernel, repairs both directions (missing/wrong entries written
with netlink replace, stale ones deleted) and returns a Drift.  `apply_peer` and
`remove_peer` are the cheap single-lease paths for the watch.  Failures are never
skipped silently: they are collected per lease and raised as one OverlayError (which
carries the Drift of what did get done).
"""

import errno
import ipaddress
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from pyroute2.netlink.exceptions import NetlinkError

WEFT_RTPROT = 0x77  # 119: unassigned in rtnetlink.h and /etc/iproute2/rt_protos
AF_INET, AF_INET6, AF_BRIDGE = 2, 10, 7
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
RT_TABLE_MAIN = 254
IFA_F_NODAD = 0x02
RT_SCOPE_UNIVERSE = 0

ROUTE, FDB, NEIGH = "route", "fdb", "neighbour"
WRITE_ORDER = (NEIGH, FDB, ROUTE)
REMOVE_ORDER = (ROUTE, FDB, NEIGH)
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV)


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


class Underlay(NamedTuple):
    """The interface holding a node's public IP."""

    index: int
    name: str
    mtu: int
    network: ipaddress._BaseNetwork


@dataclass(frozen=True)
class Plan:
    """What one network on this node should look like in the kernel.

    backend       "vxlan" | "host-gw"
    local         this node's Lease (its subnets are never routed)
    networks      cluster networks: (IPv4Network,) or (IPv4Network, IPv6Network)
    underlay      Underlay of the local public IPv4 address
    device_index  / device_name: the VXLAN device (vxlan backend only)
    vni           the device's VNI; vxlan peers must carry the same
    direct_routing  vxlan's DirectRouting
    underlay6     Underlay of the local public IPv6 address, if any (host-gw and
                  DirectRouting for IPv6 subnets route via a peer's PublicIPv6)
    peers         remote Leases (the local lease, if present, is ignored)
    """

    backend: str
    local: object
    networks: tuple
    underlay: Underlay
    device_index: int = 0
    device_name: str = ""
    vni: int = 1
    direct_routing: bool = False
    underlay6: Optional[Underlay] = None
    peers: tuple = ()

    @classmethod
    def for_network(cls, config, local, underlay: Underlay, device_index: int = 0,
                    device_name: str = "", peers=(), underlay6: Optional[Underlay] = None) -> "Plan":
        """A Plan from a NetworkConfig (cni_plugin.subnet.lease)."""
        networks = (config.network,) + ((config.ipv6_network,) if config.ipv6_network else ())
        return cls(backend=config.backend_type, local=local, networks=networks,
                   underlay=underlay, device_index=device_index, device_name=device_name,
                   vni=config.vni, direct_routing=config.direct_routing, underlay6=underlay6,
                   peers=tuple(peers))

    @property
    def ipv6(self) -> bool:
        return any(n.version == 6 for n in self.networks)

    def in_cluster(self, network) -> bool:
        return any(network.version == n.version and network.subnet_of(n) for n in self.networks)

    def oif_name(self, index: int) -> str:
        if index == self.device_index and self.device_name:
            return self.device_name
        for underlay in (self.underlay, self.underlay6):
            if underlay is not None and underlay.index == index:
                return underlay.name
        return f"if{index}"


# -- underlay discovery -------------------------------------------------------

def interface_of_ip(ipr, ip) -> Underlay:
    """The interface holding address `ip` (str or ip_address), with its MTU and the
    address's network."""
    ip = ipaddress.ip_address(str(ip))
    family = AF_INET if ip.version == 4 else AF_INET6
    for msg in ipr.addr("dump", family=family):
        have = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        if have is None or ipaddress.ip_address(have) != ip:
            continue
        link = ipr.link("get", index=msg["index"])[0]
        network = ipaddress.ip_interface(f"{ip}/{msg['prefixlen']}").network
        return Underlay(msg["index"], link.get("IFLA_IFNAME"), link.get("IFLA_MTU"), network)
    raise OverlayError(f"no interface holds the public IP {ip}; set --public-ip/--iface to an "
                       "address of this node")


def default_route_interface(ipr, version: int = 4) -> int:
    """ifindex of the main table's default route (lowest metric; first hop if multipath)."""
    family = AF_INET if version == 4 else AF_INET6
    best = None
    for msg in ipr.route("dump", family=family):
        if msg["dst_len"] != 0 or msg.get("RTA_TABLE", msg["table"]) != RT_TABLE_MAIN:
            continue
        oif = msg.get("RTA_OIF")
        if oif is None and msg.get("RTA_MULTIPATH"):
            oif = msg.get("RTA_MULTIPATH")[0]["oif"]
        if oif is None:
            continue  # unreachable/blackhole default: no interface to use
        metric = msg.get("RTA_PRIORITY") or 0
        if best is None or metric < best[0]:
            best = (metric, oif)
    if best is None:
        raise OverlayError(f"no IPv{version} default route; set --iface or --public-ip")
    return best[1]


# -- desired state (pure) -----------------------------------------------------

@dataclass
class Desired:
    """(kind, key) -> (value, lease key).  Keys and values:
    route: ip_network -> (gateway ip_address, oif, onlink); neighbour: ip_address -> mac;
    fdb: mac -> ip_address."""

    entries: dict = field(default_factory=dict)
    protected: set = field(default_factory=set)  # (kind, key) of unusable leases: left alone
    protected_fdb_dsts: set = field(default_factory=set)
    errors: list = field(default_factory=list)

    def add(self, kind, key, value, lease_key):
        self.entries[(kind, key)] = (value, lease_key)


def _describe_lease(lease) -> str:
    return f"lease {lease.key} (node {lease.node_name or '?'}, {lease.public_ip})"


def _is_local(plan: Plan, lease) -> bool:
    return lease.subnet == plan.local.subnet


def _check_peer(plan: Plan, lease) -> None:
    """Raise ValueError naming what makes `lease` unusable for this plan."""
    if lease.backend_type != plan.backend:
        raise ValueError(f"backend {lease.backend_type}, but this network uses {plan.backend}")
    if not plan.in_cluster(lease.subnet):
        raise ValueError(f"subnet {lease.subnet} is outside the cluster network")
    if plan.ipv6 and lease.ipv6_subnet is not None and not plan.in_cluster(lease.ipv6_subnet):
        raise ValueError(f"IPv6 subnet {lease.ipv6_subnet} is outside the cluster network")
    if plan.backend == "vxlan":
        if not plan.device_index:
            raise ValueError("the plan has no VXLAN device")
        if not lease.vtep_mac:
            raise ValueError("no VtepMAC")
        if lease.vni != plan.vni:
            raise ValueError(f"VNI {lease.vni}, but the local device uses VNI {plan.vni}")
    elif lease.public_ip not in plan.underlay.network:
        raise ValueError(f"host-gw needs every node on one L2 network, but {lease.public_ip} is "
                         f"outside {plan.underlay.name}'s {plan.underlay.network}; use the vxlan "
                         "backend (optionally with DirectRouting) instead")


def _direct6(plan: Plan, lease) -> Optional[ipaddress.IPv6Address]:
    """The peer's PublicIPv6 when an IPv6 subnet can be routed to it directly."""
    if plan.underlay6 is not None and lease.public_ipv6 is not None \
            and lease.public_ipv6 in plan.underlay6.network:
        return lease.public_ipv6
    return None


def peer_entries(plan: Plan, lease) -> list:
    """[(kind, key, value)] for one remote lease, in write order; ValueError if unusable."""
    _check_peer(plan, lease)
    v6 = plan.ipv6 and lease.ipv6_subnet is not None
    if plan.backend == "host-gw":
        out = [(ROUTE, lease.subnet, (lease.public_ip, plan.underlay.index, False))]
        if v6:
            gateway = _direct6(plan, lease)
            if gateway is None:
                raise ValueError(f"host-gw for IPv6 needs PublicIPv6 on the local underlay's IPv6 "
                                 f"network (peer has {lease.public_ipv6 or 'none'})")
            out.append((ROUTE, lease.ipv6_subnet, (gateway, plan.underlay6.index, False)))
        return out
    direct4 = plan.direct_routing and lease.public_ip in plan.underlay.network
    direct6 = _direct6(plan, lease) if (v6 and plan.direct_routing) else None
    neighbours, routes = [], []
    if direct4:
        routes.append((ROUTE, lease.subnet, (lease.public_ip, plan.underlay.index, False)))
    else:
        neighbours.append((NEIGH, lease.vtep_ip, lease.vtep_mac))
        routes.append((ROUTE, lease.subnet, (lease.vtep_ip, plan.device_index, True)))
    if v6 and direct6 is not None:
        routes.append((ROUTE, lease.ipv6_subnet, (direct6, plan.underlay6.index, False)))
    elif v6:
        neighbours.append((NEIGH, lease.vtep_ipv6, lease.vtep_mac))
        routes.append((ROUTE, lease.ipv6_subnet, (lease.vtep_ipv6, plan.device_index, True)))
    fdb = [(FDB, lease.vtep_mac, lease.public_ip)] if neighbours else []
    return neighbours + fdb + routes


def _protect(desired: Desired, lease) -> None:
    """An unusable lease's existing entries stay as they are until it is fixed or gone."""
    for subnet in (lease.subnet, lease.ipv6_subnet):
        if subnet is not None:
            desired.protected.add((ROUTE, subnet))
            desired.protected.add((NEIGH, subnet.network_address))
    if lease.vtep_mac:
        desired.protected.add((FDB, lease.vtep_mac))
    desired.protected_fdb_dsts.add(lease.public_ip)


def desired_state(plan: Plan) -> Desired:
    desired = Desired()
    for lease in plan.peers:
        if _is_local(plan, lease):
            continue
        try:
            entries = peer_entries(plan, lease)
        except ValueError as exc:
            desired.errors.append(f"{_describe_lease(lease)}: {exc}")
            _protect(desired, lease)
            continue
        for kind, key, value in entries:
            desired.add(kind, key, value, lease.key)
    return desired


# -- kernel state ---------------------------------------------------------------

def _read_routes(ipr, plan: Plan) -> dict:
    found = {}
    for version in sorted({n.version for n in plan.networks}):
        family = AF_INET if version == 4 else AF_INET6
        for msg in ipr.route("dump", family=family):
            if msg["proto"] != WEFT_RTPROT or msg.get("RTA_TABLE", msg["table"]) != RT_TABLE_MAIN:
                continue
            dst = msg.get("RTA_DST") or ("0.0.0.0" if version == 4 else "::")
            network = ipaddress.ip_network(f"{dst}/{msg['dst_len']}")
            if not plan.in_cluster(network):
                continue
            gateway = msg.get("RTA_GATEWAY")
            found[(ROUTE, network)] = (ipaddress.ip_address(gateway) if gateway else None,
                                       msg.get("RTA_OIF"), bool(msg["flags"] & RTNH_F_ONLINK))
    return found


def _read_neighbours(ipr, plan: Plan) -> dict:
    found = {}
    for family in (AF_INET, AF_INET6):
        for msg in ipr.neigh("dump", ifindex=plan.device_index, family=family):
            if msg["family"] != family or msg["ifindex"] != plan.device_index:
                continue
            if not msg["state"] & NUD_PERMANENT or msg.get("NDA_DST") is None:
                continue
            mac = (msg.get("NDA_LLADDR") or "").lower()
            found[(NEIGH, ipaddress.ip_address(msg.get("NDA_DST")))] = mac
    return found


def _read_fdb(ipr, plan: Plan) -> dict:
    found = {}
    for msg in ipr.fdb("dump", ifindex=plan.device_index):
        if msg["ifindex"] != plan.device_index or msg.get("NDA_LLADDR") is None:
            continue
        dst = msg.get("NDA_DST")
        value = ipaddress.ip_address(dst) if dst else None
        if not msg["state"] & NUD_PERMANENT:
            value = ("not permanent", value)  # never equal to a desired value: rewritten
        found[(FDB, msg.get("NDA_LLADDR").lower())] = value
    return found


def read_state(ipr, plan: Plan) -> dict:
    """(kind, key) -> value of every kernel entry this plan owns (see module doc)."""
    state = _read_routes(ipr, plan)
    if plan.backend == "vxlan" and plan.device_index:
        state.update(_read_neighbours(ipr, plan))
        state.update(_read_fdb(ipr, plan))
    return state


# -- netlink writes ---------------------------------------------------------------

def _write(ipr, plan: Plan, kind: str, key, value) -> None:
    if kind == NEIGH:
        ipr.neigh("replace", ifindex=plan.device_index, dst=str(key), lladdr=value,
                  state=NUD_PERMANENT, family=AF_INET if key.version == 4 else AF_INET6)
    elif kind == FDB:
        # pyroute2 0.9 fills in NTF_SELF/NUD_PERMANENT only for add/append/del;
        # "replace" without flags=NTF_SELF goes to the (absent) bridge master: EOPNOTSUPP.
        ipr.fdb("replace", ifindex=plan.device_index, lladdr=key, dst=str(value),
                state=NUD_PERMANENT, flags=NTF_SELF)
    else:
        gateway, oif, onlink = value
        ipr.route("replace", dst=str(key), gateway=str(gateway), oif=oif, table=RT_TABLE_MAIN,
                  proto=WEFT_RTPROT, flags=RTNH_F_ONLINK if onlink else 0)


def _delete(ipr, plan: Plan, kind: str, key, value) -> bool:
    """Delete one entry; False when it was already gone."""
    try:
        if kind == NEIGH:
            ipr.neigh("del", ifindex=plan.device_index, dst=str(key),
                      family=AF_INET if key.version == 4 else AF_INET6)
        elif kind == FDB:
            dst = value[1] if isinstance(value, tuple) else value
            ipr.fdb("del", ifindex=plan.device_index, lladdr=key,
                    **({"dst": str(dst)} if dst is not None else {}))
        else:  # by destination and weft's protocol: never someone else's route
            ipr.route("del", dst=str(key), table=RT_TABLE_MAIN, proto=WEFT_RTPROT)
    except NetlinkError as exc:
        if exc.code in _GONE:
            return False
        raise
    return True


def describe(plan: Plan, kind: str, key, value) -> str:
    if kind == ROUTE:
        gateway, oif, onlink = value
        return f"route {key} via {gateway} dev {plan.oif_name(oif)}{' onlink' if onlink else ''}"
    if kind == NEIGH:
        return f"neighbour {key} lladdr {value} dev {plan.device_name}"
    return f"fdb {key} dst {value} dev {plan.device_name}"


# -- reconcile, apply, remove -------------------------------------------------------

def _stale(desired: Desired, actual: dict) -> list:
    out = []
    for (kind, key), value in actual.items():
        if (kind, key) in desired.entries or (kind, key) in desired.protected:
            continue
        if kind == FDB and value in desired.protected_fdb_dsts:
            continue
        out.append((kind, key, value))
    return out


def _remove_stale(ipr, plan: Plan, stale: list, drift: Drift, errors: list) -> None:
    for kind in REMOVE_ORDER:
        for entry_kind, key, value in stale:
            if entry_kind != kind:
                continue
            text = describe(plan, kind, key, value)
            try:
                if _delete(ipr, plan, kind, key, value):
                    drift.removed += 1
                    drift.details.append(f"{text} was stale (no lease), removed")
            except NetlinkError as exc:
                errors.append(f"cannot remove stale {text}: {exc}")


def _add_missing(ipr, plan: Plan, desired: Desired, actual: dict, drift: Drift, errors: list) -> None:
    failed = set()  # lease keys with a failed entry: their later entries (the route) wait
    for kind in WRITE_ORDER:
        for (entry_kind, key), (value, lease_key) in desired.entries.items():
            if entry_kind != kind or actual.get((kind, key)) == value or lease_key in failed:
                continue
            text = describe(plan, kind, key, value)
            try:
                _write(ipr, plan, kind, key, value)
            except NetlinkError as exc:
                failed.add(lease_key)
                errors.append(f"lease {lease_key}: cannot program {text}: {exc}")
                continue
            drift.added += 1
            old = actual.get((kind, key))
            drift.details.append(f"{text} was missing" if old is None else f"{text} was wrong (had {old})")


def reconcile(ipr, plan: Plan) -> Drift:
    """Make the kernel match `plan` in both directions; the Drift says what was repaired.
    Raises OverlayError (with .drift) if any lease could not be programmed."""
    desired = desired_state(plan)
    actual = read_state(ipr, plan)
    drift = Drift()
    errors = list(desired.errors)
    _remove_stale(ipr, plan, _stale(desired, actual), drift, errors)
    _add_missing(ipr, plan, desired, actual, drift, errors)
    if errors:
        raise OverlayError(f"network datapath {plan.device_name or plan.underlay.name}: "
                           f"{len(errors)} problem(s)", errors, drift)
    return drift


def apply_peer(ipr, plan: Plan, lease) -> Drift:
    """Program one remote lease (neighbour, FDB, route; idempotent replaces, no reads).
    Drift.added counts the entries written."""
    drift = Drift()
    if _is_local(plan, lease):
        return drift
    try:
        entries = peer_entries(plan, lease)
    except ValueError as exc:
        raise OverlayError(f"{_describe_lease(lease)}: {exc}") from None
    for kind, key, value in entries:
        text = describe(plan, kind, key, value)
        try:
            _write(ipr, plan, kind, key, value)
        except NetlinkError as exc:
            raise OverlayError(f"lease {lease.key}: cannot program {text}: {exc}",
                               drift=drift) from None
        drift.added += 1
        drift.details.append(f"programmed {text}")
    return drift


def remove_peer(ipr, plan: Plan, lease) -> Drift:
    """Remove what a remote lease had: its routes (by destination and weft's protocol,
    so a route that moved to the underlay with DirectRouting goes too), then its FDB
    entry (only while it still points at the lease's PublicIP), then its neighbours."""
    drift = Drift()
    if _is_local(plan, lease):
        return drift
    subnets = [s for s in (lease.subnet, lease.ipv6_subnet) if s is not None]
    entries = [(ROUTE, s, None) for s in subnets]
    if plan.backend == "vxlan" and plan.device_index:
        if lease.vtep_mac:
            entries.append((FDB, lease.vtep_mac, lease.public_ip))
        entries += [(NEIGH, s.network_address, lease.vtep_mac) for s in subnets]
    for kind, key, value in entries:
        text = f"{kind} {key}" + (f" ({value})" if value is not None else "")
        try:
            if _delete(ipr, plan, kind, key, value):
                drift.removed += 1
                drift.details.append(f"removed {text}")
        except NetlinkError as exc:
            raise OverlayError(f"lease {lease.key}: cannot remove {text}: {exc}", drift=drift) from None
    return drift
