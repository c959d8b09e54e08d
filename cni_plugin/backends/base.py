"""What a backend is: its config keys, its lease data, its device, its per-peer entries.

Kernel entries are (kind, key, value) triples that the shared engine reads back,
compares and writes:
  route      ip_network  -> (gateway ip_address, oif, onlink)
  neighbour  (ifindex, ip_address) -> MAC           (on one of the backend's devices)
  fdb        (ifindex, MAC)        -> ip_address    (on one of the backend's devices)
plus the backend's own "device entries" (its DEVICE_KINDS, e.g. WireGuard peers),
which the backend itself reads back, writes and deletes on its device; the engine
treats them like the others (compare, write, remove stale) and orders them after
neighbours/FDB and before routes when writing (reverse when removing).

Every backend declares NOTIFIED_KINDS: the kinds of its entries whose changes the
kernel announces over rtnetlink (datapath/changes.py KernelChanges follows routes of
weft's protocol, and neighbours and FDB entries on the backend's device).  A quiet
reconcile pass skips reading those; every other kind it owns (a WireGuard peer lives
behind generic netlink or wireguard-go's socket: no notification) is read on every
pass.  register() refuses a backend that leaves it undeclared, so a new backend (an
IPv6 device included) cannot silently go unrepaired.
"""

from typing import ClassVar, NamedTuple, Optional

ROUTE, FDB, NEIGH = "route", "fdb", "neighbour"


class BackendDataError(ValueError):
    """A lease's BackendData (or a config's Backend section) is unusable; says which key."""


class Device(NamedTuple):
    """The backend's own device on this node (index 0: it has none)."""

    index: int = 0
    name: str = ""


class SetupResult(NamedTuple):
    mtu: int              # the pod MTU this backend leaves room for (the smallest its devices allow)
    device: Device
    action: str = ""      # what was done to the device, e.g. "recreated"
    reason: str = ""
    device6: Device = Device()  # VXLAN's second device, over the IPv6 underlay


class Backend:
    """One backend type.  Subclasses set `name`, `CONFIG_KEYS` and override what they need."""

    name: ClassVar[str] = ""
    CONFIG_KEYS: ClassVar[tuple] = ()   # keys of the network config's Backend section
    owns_device_entries: ClassVar[bool] = False  # permanent neighbours/FDB on its device are ours
    DEVICE_KINDS: ClassVar[tuple] = ()  # kinds of entry this backend reads/writes on its device
    NOTIFIED_KINDS: ClassVar[Optional[frozenset]] = None  # see the module doc; must be declared

    # -- network config ------------------------------------------------------------
    @classmethod
    def parse_config(cls, section: dict):
        """The Backend section (Type removed) -> this backend's frozen config object.
        Keys of other backends are ignored (a config may be switched between types)."""
        return None

    @classmethod
    def config_clash(cls, mine, theirs, other: str) -> Optional[str]:
        """Why this network cannot share a node with network `other` (same backend type,
        config `theirs`), or None."""
        return None

    # -- lease data (the opaque BackendData of a lease) --------------------------------
    @classmethod
    def parse_lease_data(cls, data: dict):
        """etcd's BackendData -> a frozen value object; BackendDataError if unusable."""
        return None

    @classmethod
    def lease_data_json(cls, data) -> dict:
        return {}

    @classmethod
    def validate_peer_data(cls, config, data) -> None:
        """THE per-backend hook of lease validation (subnet/validation.py calls it for every
        lease of a network of this type, at acquisition, on each watch event and at each
        reconcile): raise BackendDataError naming the key and value when `data` (from
        parse_lease_data) is implausible for a peer under this network's `config` (from
        parse_config), e.g. a broadcast VTEP MAC, a foreign VNI, a malformed public key.
        A lease refused here is never programmed on any node.  Keep it pure (no I/O) and
        import heavy helpers (netaddr) inside the function."""

    @classmethod
    def device_label(cls, data) -> str:
        """The device a lease with this BackendData programs on its node, for display."""
        return cls.name

    @classmethod
    def local_lease_data(cls, config, node, network: str):
        """What this node publishes in its lease (config: the backend's config object)."""
        return None

    # -- this node -----------------------------------------------------------------------
    def __init__(self, config, log=None):
        self.config = config  # the backend's config object
        self.log = log

    def setup(self, nl, network, lease, node, underlay, underlay6=None) -> SetupResult:
        """Create or repair the device(s) for `lease` (this node's); network: NetworkConfig;
        underlay/underlay6: datapath.underlay.Underlay of the node's IPv4/IPv6 address
        (None: the node has no underlay of that family)."""
        return SetupResult(min(u.mtu for u in (underlay, underlay6) if u is not None), Device())

    def rotate_key(self, nl, network, lease, node):
        """Replace this node's key (backends that have one); returns the new BackendData
        to publish in the lease.  NotImplementedError: this backend has no key."""
        raise NotImplementedError(f"backend {self.name} has no key to rotate")

    def status(self) -> dict:
        """Keys merged into the network's status file (e.g. which implementation runs)."""
        return {}

    # -- device entries (DEVICE_KINDS): the backend's own reader and writer ----------------
    def read_device_entries(self, nl, plan) -> dict:
        """{(kind, key): value} of every entry of DEVICE_KINDS on the plan's device."""
        return {}

    def write_device_entry(self, nl, plan, kind: str, key, value) -> None:
        raise NotImplementedError(kind)

    def delete_device_entry(self, nl, plan, kind: str, key, value) -> bool:
        """Remove one entry; False when it was already gone (True also when the device
        cannot tell, e.g. wireguard-go: callers remove only what they read or wrote)."""
        raise NotImplementedError(kind)

    def describe_device_entry(self, plan, kind: str, key, value) -> str:
        return f"{kind} {key} {value}"

    # -- remote leases (pure) --------------------------------------------------------------
    def local_entries(self, plan) -> list:
        """[(kind, key, value)] of DEVICE_KINDS that this node's own device must hold
        whatever the peers (e.g. WireGuard's listen port and key): compared and repaired
        on every pass like peer entries, never removed as stale."""
        return []

    def check_peer(self, plan, lease) -> None:
        """Raise ValueError naming what makes a remote lease unusable for this backend."""

    def peer_entries(self, plan, lease) -> list:
        """[(kind, key, value)] for one usable remote lease, in write order."""
        raise NotImplementedError

    def peer_gaps(self, plan, lease) -> list:
        """[text] of what this backend cannot carry to a usable peer (e.g. host-gw: an IPv6
        subnet over an IPv4-only common underlay): shown in the status, never blocking the
        peer's other entries."""
        return []

    def peer_owned(self, plan, lease) -> list:
        """[(kind, key, value or None)] a lease may own, in removal order (value: what an
        entry must still point at to be removed; None: remove by key)."""
        return []
