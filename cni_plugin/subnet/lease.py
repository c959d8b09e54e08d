"""Network configuration and node leases as stored in etcd (pure data, no I/O).

The Backend section of a config and the BackendData of a lease belong to the backend
named by their type (cni_plugin.backends): this module parses the generic keys and
hands those parts to it.

etcd layout (prefix default /weft):
  <prefix>/networks/<network>/config                 NetworkConfig JSON (flannel's key names)
  <prefix>/networks/<network>/subnets/<a.b.c.d>-<len> Lease JSON, bound to an etcd lease
  <prefix>/networks/<network>/subnets/<v6 address>-<len>  the same for an IPv6-only network
                                                     (EnableIPv4 false), e.g. fd10:224:0:5::-64
"""

import functools
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Optional

from .. import backends
from ..checks import is_a, is_mtu
from ..backends.base import BackendDataError
from ..flows import config as flow_config


class ConfigError(ValueError):
    """A network config or lease that cannot be used; the message names the key."""


def subnet_key(subnet) -> str:
    """The key suffix of a lease: its IPv4 subnet, or its IPv6 subnet on an IPv6-only network."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str):
    """IPv4Network, or IPv6Network for an IPv6-only network's key; ConfigError when the key
    is not <address>-<prefix length> in its one canonical spelling (a second spelling of
    one subnet would be a second key for it)."""
    suffix = key.rpartition("/")[2]
    address, sep, length = suffix.partition("-")
    if not sep:
        raise ConfigError(f"lease key {key!r} is not <address>-<prefix length>")
    kind = ipaddress.IPv6Network if ":" in address else ipaddress.IPv4Network
    try:
        subnet = kind(f"{address}/{length}")
    except ValueError as exc:
        raise ConfigError(f"lease key {key!r}: {exc}") from None
    if subnet_key(subnet) != suffix:
        raise ConfigError(f"lease key {key!r} is not written canonically; the key of {subnet} is "
                          f"{subnet_key(subnet)!r}")
    return subnet


def _parse_backend(where: str, section: dict) -> tuple:
    """(type, the backend's config object) from a config's Backend section."""
    backend_type = section.get("Type", "vxlan")
    try:
        backend = backends.get(backend_type) if isinstance(backend_type, str) else None
    except KeyError:
        backend = None
    if backend is None:
        raise ConfigError(f"{where}: Backend.Type {backend_type!r} is not one of {', '.join(backends.names())}")
    try:
        return backend_type, backend.parse_config({k: v for k, v in section.items() if k != "Type"})
    except BackendDataError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# Kubernetes names: a namespace is an RFC 1123 label, a pod name an RFC 1123 subdomain
_K8S_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_K8S_POD_NAME = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _control_plane_access(where: str, entries: list) -> tuple:
    """ControlPlaneAccess: a list of "namespace/name" or "namespace/*" (sorted, unique)."""
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: ControlPlaneAccess is {json.dumps(entries)}, not a list; give the pods "
                          "allowed to reach etcd and weftd as [\"namespace/name\", \"namespace/*\", ...] "
                          "(or [] for none)")
    out = set()
    for index, entry in enumerate(entries):
        at = f"{where}: ControlPlaneAccess[{index}]"
        if not isinstance(entry, str):
            raise ConfigError(f"{at} is {json.dumps(entry)}, not a string; write each pod as "
                              "\"namespace/name\" or a whole namespace as \"namespace/*\"")
        namespace, sep, name = entry.partition("/")
        if not sep or "/" in name:
            raise ConfigError(f"{at} {entry!r} is not \"namespace/name\" or \"namespace/*\"")
        if not _K8S_NAMESPACE.match(namespace):
            raise ConfigError(f"{at} {entry!r}: namespace {namespace!r} is not a Kubernetes namespace name "
                              "(lower-case letters, digits and '-', at most 63, starting and ending alphanumeric)")
        if name != "*" and not _K8S_POD_NAME.match(name):
            raise ConfigError(f"{at} {entry!r}: {name!r} is not a Kubernetes pod name (lower-case letters, "
                              "digits, '-' and '.', at most 253) nor \"*\" (every pod of the namespace)")
        out.add(entry)
    return tuple(sorted(out))


def _flow_log(where: str, value):
    try:
        return flow_config.parse(where, value)
    except flow_config.FlowLogError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class NetworkConfig:
    name: str
    network: Optional[ipaddress.IPv4Network]   # None on an IPv6-only network (EnableIPv4 false)
    subnet_len: int = 24
    subnet_min: Optional[ipaddress.IPv4Network] = None
    subnet_max: Optional[ipaddress.IPv4Network] = None
    ipv6_network: Optional[ipaddress.IPv6Network] = None
    ipv6_subnet_len: int = 64
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    ip_masq: bool = True
    mtu: Optional[int] = None
    backend_type: str = "vxlan"
    backend: object = None  # the backend's own config object (backends/<type>.py)
    # "namespace/name" or "namespace/*": pods the control-plane guard lets reach etcd and weftd
    control_plane_access: tuple = ()
    flow_log: Optional[flow_config.FlowLog] = None  # FlowLog: flow records on (docs/flows.md)
    raw: dict = field(default_factory=dict, compare=False)
    # IPv6-only networks: the leasable range of IPv6 subnets (dual-stack pairs them by index)
    ipv6_subnet_min: Optional[ipaddress.IPv6Network] = None
    ipv6_subnet_max: Optional[ipaddress.IPv6Network] = None
    # per-family masquerade overrides (IPv4Masq, IPv6Masq); None: as IPMasq says
    ipv4_masq: Optional[bool] = None
    ipv6_masq: Optional[bool] = None

    @property
    def backend_class(self):
        return backends.get(self.backend_type)

    @property
    def ipv6_only(self) -> bool:
        return not self.enable_ipv4

    @property
    def key_network(self):
        """The network whose subnets name the leases: Network, or IPv6Network when IPv6-only."""
        return self.ipv6_network if self.ipv6_only else self.network

    @property
    def key_subnet_len(self) -> int:
        return self.ipv6_subnet_len if self.ipv6_only else self.subnet_len

    @property
    def networks(self) -> tuple:
        """The cluster networks of the families this network carries."""
        return tuple(n for n in (self.network, self.ipv6_network) if n is not None)

    def masquerades(self, version: int) -> bool:
        """Whether pod traffic of this address family leaving the cluster is masqueraded."""
        override = self.ipv4_masq if version == 4 else self.ipv6_masq
        return self.ip_masq if override is None else override

    @classmethod
    def parse(cls, name: str, text: str) -> "NetworkConfig":
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"network {name}: config is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"network {name}: config must be a JSON object")
        return cls.from_dict(name, raw)

    @classmethod
    def from_dict(cls, name: str, raw: dict) -> "NetworkConfig":
        where = f"network {name}"

        def get(key, kind, default=None):
            value = raw.get(key, default)
            if value is default:
                return value
            if not is_a(value, kind):
                raise ConfigError(f"{where}: {key} has the wrong type: {json.dumps(value)}")
            return value

        def net(key, kind):
            value = get(key, str)
            if value is None:
                return None
            try:
                return kind(value)
            except ValueError as exc:
                raise ConfigError(f"{where}: {key} {value!r} is not a valid CIDR: {exc}") from None

        enable_ipv4 = get("EnableIPv4", bool, True)
        enable_ipv6 = get("EnableIPv6", bool, False)
        if not enable_ipv4 and not enable_ipv6:
            raise ConfigError(f"{where}: EnableIPv4 and EnableIPv6 are both false; a network carries "
                              "IPv4, IPv6 or both (an IPv6-only network: EnableIPv4 false, EnableIPv6 true, "
                              "IPv6Network)")
        network = net("Network", ipaddress.IPv4Network)
        ipv6_network = net("IPv6Network", ipaddress.IPv6Network)
        if not enable_ipv4:
            present = [k for k in ("Network", "SubnetLen", "SubnetMin", "SubnetMax", "IPv4Masq") if k in raw]
            if present:
                raise ConfigError(f"{where}: EnableIPv4 is false but {present[0]} is "
                                  f"{json.dumps(raw[present[0]])}; an IPv6-only network has no IPv4 keys "
                                  f"(remove {', '.join(present)}, or set EnableIPv4 true)")
        elif network is None:
            raise ConfigError(f"{where}: Network is required (e.g. \"10.244.0.0/16\")")
        if enable_ipv6 and ipv6_network is None:
            raise ConfigError(f"{where}: EnableIPv6 needs IPv6Network (e.g. \"fd10:244::/48\")")
        subnet_len = get("SubnetLen", int, 24)
        if network is not None and not network.prefixlen < subnet_len <= 30:
            raise ConfigError(f"{where}: SubnetLen {subnet_len} must be longer than Network's "
                              f"/{network.prefixlen} and at most 30")
        ipv6_subnet_len = get("IPv6SubnetLen", int, 64)
        if ipv6_network is not None and not ipv6_network.prefixlen < ipv6_subnet_len <= 126:
            raise ConfigError(f"{where}: IPv6SubnetLen {ipv6_subnet_len} must be longer than "
                              f"IPv6Network's /{ipv6_network.prefixlen} and at most 126")
        if ipv6_network is not None and enable_ipv6 and enable_ipv4:
            if ipv6_subnet_len - ipv6_network.prefixlen < subnet_len - network.prefixlen:
                raise ConfigError(f"{where}: IPv6Network/IPv6SubnetLen give fewer subnets than "
                                  "Network/SubnetLen; every IPv4 subnet needs an IPv6 one")
            bounds6 = [k for k in ("IPv6SubnetMin", "IPv6SubnetMax") if k in raw]
            if bounds6:
                raise ConfigError(f"{where}: {bounds6[0]} {json.dumps(raw[bounds6[0]])} applies to IPv6-only "
                                  "networks; on a dual-stack network each IPv6 subnet follows its IPv4 "
                                  "subnet, so bound the range with SubnetMin/SubnetMax instead")

        def bound(key, kind, length, within, within_key):
            value = get(key, str)
            if value is None:
                return None
            try:
                subnet = kind(f"{value}/{length}")
            except ValueError as exc:
                raise ConfigError(f"{where}: {key} {value!r} is not a subnet of length "
                                  f"{length}: {exc}") from None
            if not subnet.subnet_of(within):
                raise ConfigError(f"{where}: {key} {value} is outside {within_key} {within}")
            return subnet

        v4 = (ipaddress.IPv4Network, subnet_len, network, "Network")
        v6 = (ipaddress.IPv6Network, ipv6_subnet_len, ipv6_network, "IPv6Network")
        backend_type, backend_config = _parse_backend(where, get("Backend", dict, {}) or {})
        mtu = get("MTU", int)
        if mtu is not None and not is_mtu(mtu):
            raise ConfigError(f"{where}: MTU {mtu} is out of range (68-65535)")
        config = cls(
            name=name, network=network if enable_ipv4 else None, subnet_len=subnet_len,
            subnet_min=bound("SubnetMin", *v4), subnet_max=bound("SubnetMax", *v4),
            ipv6_network=ipv6_network if enable_ipv6 else None, ipv6_subnet_len=ipv6_subnet_len,
            ipv6_subnet_min=bound("IPv6SubnetMin", *v6) if not enable_ipv4 else None,
            ipv6_subnet_max=bound("IPv6SubnetMax", *v6) if not enable_ipv4 else None,
            enable_ipv4=enable_ipv4, enable_ipv6=enable_ipv6,
            ip_masq=get("IPMasq", bool, True), ipv4_masq=get("IPv4Masq", bool), ipv6_masq=get("IPv6Masq", bool),
            mtu=mtu, backend_type=backend_type, backend=backend_config, raw=raw,
            control_plane_access=_control_plane_access(where, raw.get("ControlPlaneAccess", [])),
            flow_log=_flow_log(where, raw.get("FlowLog")),
        )
        for low, high, prefix in ((config.subnet_min, config.subnet_max, ""),
                                  (config.ipv6_subnet_min, config.ipv6_subnet_max, "IPv6")):
            if low and high and low > high:
                raise ConfigError(f"{where}: {prefix}SubnetMin {low} is above {prefix}SubnetMax {high}")
        return config

    def _bounds(self) -> tuple:
        if self.ipv6_only:
            return self.ipv6_subnet_min, self.ipv6_subnet_max
        return self.subnet_min, self.subnet_max

    def subnet_range(self) -> tuple:
        """(first, last) leasable subnets of the key family (IPv4, or IPv6 on an IPv6-only
        network); by default the network's first subnet is skipped, as flannel does."""
        network, length = self.key_network, self.key_subnet_len
        step = 1 << (network.max_prefixlen - length)
        kind = type(network)
        first, last = self._bounds()
        if first is None:
            first = kind((int(network.network_address) + step, length))
        if last is None:
            last = kind((int(network.broadcast_address) + 1 - step, length))
        return first, last

    def subnet_count(self) -> int:
        first, last = self.subnet_range()
        step = 1 << (first.max_prefixlen - self.key_subnet_len)
        return (int(last.network_address) - int(first.network_address)) // step + 1

    def nth_subnet(self, index: int):
        first, _ = self.subnet_range()
        step = 1 << (first.max_prefixlen - self.key_subnet_len)
        return type(first)((int(first.network_address) + index * step, self.key_subnet_len))

    def ipv6_subnet_for(self, subnet) -> Optional[ipaddress.IPv6Network]:
        """The IPv6 subnet of a lease keyed by `subnet`: on a dual-stack network the one
        paired with the IPv4 subnet (same index within each network); on an IPv6-only
        network the key subnet itself."""
        if self.ipv6_network is None:
            return None
        if subnet.version == 6:
            return subnet
        index = (int(subnet.network_address) - int(self.network.network_address)) >> (32 - self.subnet_len)
        step = 1 << (128 - self.ipv6_subnet_len)
        return ipaddress.IPv6Network((int(self.ipv6_network.network_address) + index * step,
                                      self.ipv6_subnet_len))


@dataclass(frozen=True)
class Lease:
    """One node's lease of a subnet on one network.

    subnet is the IPv4 subnet, None on an IPv6-only network: there ipv6_subnet names the
    lease (its key); `subnets` lists whichever are present."""

    subnet: Optional[ipaddress.IPv4Network]
    # the node's underlay addresses: at least one of the two (agent/node.py); which inner
    # family rides which is backends/engine.py's underlay_route
    public_ip: Optional[ipaddress.IPv4Address]
    node_name: str
    backend_type: str = "vxlan"
    # the backend's value object (backends/<type>.py), or the raw dict of an unknown type
    backend_data: object = None
    ipv6_subnet: Optional[ipaddress.IPv6Network] = None
    public_ipv6: Optional[ipaddress.IPv6Address] = None
    # the agent's stable identity (agent/node.py: made once in its state dir); "" in leases
    # written by hand or by agents before node IDs
    node_id: str = ""

    def __post_init__(self):
        if self.backend_data is None:  # the backend's defaults (e.g. VNI 1, no VTEP MAC)
            object.__setattr__(self, "backend_data", _parse_data(self.backend_type, {}))

    @property
    def vtep_mac(self) -> str:
        """The VTEP MAC a VXLAN lease carries ("" for other backends): shown by status tools."""
        return getattr(self.backend_data, "vtep_mac", "")

    @property
    def key_subnet(self):
        """The subnet the key names: the IPv4 subnet, or the IPv6 one of an IPv6-only lease."""
        return self.subnet if self.subnet is not None else self.ipv6_subnet

    @property
    def subnets(self) -> tuple:
        """The lease's subnets, IPv4 first: one or two."""
        return tuple(s for s in (self.subnet, self.ipv6_subnet) if s is not None)

    @functools.cached_property
    def key(self) -> str:
        # cached: a reconcile asks each of 5,000 leases for it three times (a third of
        # engine.desired_state's time went to formatting it)
        return subnet_key(self.key_subnet)

    @property
    def public_ips(self) -> tuple:
        """The underlay addresses it carries, IPv4 first."""
        return tuple(a for a in (self.public_ip, self.public_ipv6) if a is not None)

    @property
    def underlay_text(self) -> str:
        """Its underlay addresses for messages and status lines, e.g. "192.0.2.1,2001:db8::1"."""
        return ",".join(map(str, self.public_ips)) or "none"

    def to_json(self) -> str:
        value = {"NodeName": self.node_name, "BackendType": self.backend_type, "BackendData": _data_json(self)}
        if self.public_ip is not None:
            value["PublicIP"] = str(self.public_ip)
        if self.public_ipv6 is not None:
            value["PublicIPv6"] = str(self.public_ipv6)
        if self.ipv6_subnet is not None:  # an IPv6-only lease's key subnet too: its value is self-contained
            value["IPv6Subnet"] = str(self.ipv6_subnet)
        if self.node_id:
            value["NodeID"] = self.node_id
        return json.dumps(value, sort_keys=True)

    @property
    def identity(self) -> str:
        """Who holds it, for messages: node name, node ID, public IP."""
        return f"{self.node_name} (node ID {self.node_id or 'none'}, public IP {self.underlay_text})"

    @classmethod
    def from_json(cls, key: str, text) -> "Lease":
        subnet = parse_subnet_key(key)
        try:
            raw = json.loads(text)
            backend_type = str(raw.get("BackendType", "vxlan"))
            if not raw.get("PublicIP") and not raw.get("PublicIPv6"):
                raise ValueError("neither PublicIP nor PublicIPv6 is set (a lease needs an underlay address)")
            ipv6_subnet = ipaddress.IPv6Network(raw["IPv6Subnet"]) if raw.get("IPv6Subnet") else None
            if subnet.version == 6:  # an IPv6-only network's lease: the key is its subnet
                if ipv6_subnet not in (None, subnet):
                    raise ValueError(f"IPv6Subnet {ipv6_subnet} contradicts the key's {subnet}")
                subnet, ipv6_subnet = None, subnet
            return cls(
                subnet=subnet,
                public_ip=ipaddress.IPv4Address(raw["PublicIP"]) if raw.get("PublicIP") else None,
                node_name=str(raw.get("NodeName", "")),
                backend_type=backend_type,
                backend_data=_parse_data(backend_type, raw.get("BackendData") or {}),
                ipv6_subnet=ipv6_subnet,
                public_ipv6=ipaddress.IPv6Address(raw["PublicIPv6"]) if raw.get("PublicIPv6") else None,
                node_id=str(raw.get("NodeID", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"lease {key}: unusable value: {exc}") from None


def _parse_data(backend_type: str, data):
    if not isinstance(data, dict):
        raise ValueError(f"BackendData {data!r} is not an object")
    try:
        backend = backends.get(backend_type)
    except KeyError:  # another backend's lease: kept as it is, never programmed here
        return dict(data)
    return backend.parse_lease_data(data)


def _data_json(lease: Lease) -> dict:
    try:
        backend = backends.get(lease.backend_type)
    except KeyError:
        return dict(lease.backend_data or {})
    return backend.lease_data_json(lease.backend_data)
