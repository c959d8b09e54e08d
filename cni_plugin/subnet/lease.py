"""Network configuration and node leases as stored in etcd (pure data, no I/O).

The Backend section of a config and the BackendData of a lease belong to the backend
named by their type (cni_plugin.backends): this module parses the generic keys and
hands those parts to it.

etcd layout (prefix default /weft):
  <prefix>/networks/<network>/config                 NetworkConfig JSON (flannel's key names)
  <prefix>/networks/<network>/subnets/<a.b.c.d>-<len> Lease JSON, bound to an etcd lease
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


def subnet_key(subnet: ipaddress.IPv4Network) -> str:
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str) -> ipaddress.IPv4Network:
    address, sep, length = key.rpartition("/")[2].partition("-")
    if not sep:
        raise ConfigError(f"lease key {key!r} is not <address>-<prefix length>")
    try:
        return ipaddress.IPv4Network(f"{address}/{length}")
    except ValueError as exc:
        raise ConfigError(f"lease key {key!r}: {exc}") from None


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
    network: Optional[ipaddress.IPv4Network]
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

    @property
    def backend_class(self):
        return backends.get(self.backend_type)

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
        network = net("Network", ipaddress.IPv4Network)
        ipv6_network = net("IPv6Network", ipaddress.IPv6Network)
        if enable_ipv4 and network is None:
            raise ConfigError(f"{where}: Network is required (e.g. \"10.244.0.0/16\")")
        if not enable_ipv4:
            raise ConfigError(f"{where}: EnableIPv4 false is not supported; weft needs an IPv4 pod network")
        if enable_ipv6 and ipv6_network is None:
            raise ConfigError(f"{where}: EnableIPv6 needs IPv6Network")
        subnet_len = get("SubnetLen", int, 24)
        if network is not None and not network.prefixlen < subnet_len <= 30:
            raise ConfigError(f"{where}: SubnetLen {subnet_len} must be longer than Network's "
                              f"/{network.prefixlen} and at most 30")
        ipv6_subnet_len = get("IPv6SubnetLen", int, 64)
        if ipv6_network is not None and not ipv6_network.prefixlen < ipv6_subnet_len <= 126:
            raise ConfigError(f"{where}: IPv6SubnetLen {ipv6_subnet_len} must be longer than "
                              f"IPv6Network's /{ipv6_network.prefixlen} and at most 126")
        if ipv6_network is not None and enable_ipv6:
            if ipv6_subnet_len - ipv6_network.prefixlen < subnet_len - network.prefixlen:
                raise ConfigError(f"{where}: IPv6Network/IPv6SubnetLen give fewer subnets than "
                                  "Network/SubnetLen; every IPv4 subnet needs an IPv6 one")

        def bound(key):
            value = get(key, str)
            if value is None:
                return None
            try:
                subnet = ipaddress.IPv4Network(f"{value}/{subnet_len}")
            except ValueError as exc:
                raise ConfigError(f"{where}: {key} {value!r} is not a subnet of length "
                                  f"{subnet_len}: {exc}") from None
            if not subnet.subnet_of(network):
                raise ConfigError(f"{where}: {key} {value} is outside Network {network}")
            return subnet

        backend_type, backend_config = _parse_backend(where, get("Backend", dict, {}) or {})
        mtu = get("MTU", int)
        if mtu is not None and not is_mtu(mtu):
            raise ConfigError(f"{where}: MTU {mtu} is out of range (68-65535)")
        config = cls(
            name=name, network=network, subnet_len=subnet_len,
            subnet_min=bound("SubnetMin"), subnet_max=bound("SubnetMax"),
            ipv6_network=ipv6_network if enable_ipv6 else None, ipv6_subnet_len=ipv6_subnet_len,
            enable_ipv4=enable_ipv4, enable_ipv6=enable_ipv6,
            ip_masq=get("IPMasq", bool, True), mtu=mtu, backend_type=backend_type,
            backend=backend_config, raw=raw,
            control_plane_access=_control_plane_access(where, raw.get("ControlPlaneAccess", [])),
            flow_log=_flow_log(where, raw.get("FlowLog")),
        )
        if config.subnet_min and config.subnet_max and config.subnet_min > config.subnet_max:
            raise ConfigError(f"{where}: SubnetMin {config.subnet_min} is above SubnetMax {config.subnet_max}")
        return config

    def subnet_range(self) -> tuple:
        """(first, last) leasable subnets; by default the first subnet (the network's
        .0/len) is skipped, as flannel does."""
        first = self.subnet_min
        if first is None:
            first = ipaddress.IPv4Network(
                (int(self.network.network_address) + (1 << (32 - self.subnet_len)), self.subnet_len))
        last = self.subnet_max
        if last is None:
            last = ipaddress.IPv4Network(
                (int(self.network.broadcast_address) + 1 - (1 << (32 - self.subnet_len)), self.subnet_len))
        return first, last

    def subnet_count(self) -> int:
        first, last = self.subnet_range()
        return (int(last.network_address) - int(first.network_address)) // (1 << (32 - self.subnet_len)) + 1

    def nth_subnet(self, index: int) -> ipaddress.IPv4Network:
        first, _ = self.subnet_range()
        return ipaddress.IPv4Network(
            (int(first.network_address) + index * (1 << (32 - self.subnet_len)), self.subnet_len))

    def ipv6_subnet_for(self, subnet: ipaddress.IPv4Network) -> Optional[ipaddress.IPv6Network]:
        """The IPv6 subnet paired with an IPv4 subnet: same index within each network."""
        if self.ipv6_network is None:
            return None
        index = (int(subnet.network_address) - int(self.network.network_address)) >> (32 - self.subnet_len)
        step = 1 << (128 - self.ipv6_subnet_len)
        return ipaddress.IPv6Network((int(self.ipv6_network.network_address) + index * step,
                                      self.ipv6_subnet_len))


@dataclass(frozen=True)
class Lease:
    """One node's lease of a subnet on one network."""

    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
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

    @functools.cached_property
    def key(self) -> str:
        # cached: a reconcile asks each of 5,000 leases for it three times (a third of
        # engine.desired_state's time went to formatting it)
        return subnet_key(self.subnet)

    def to_json(self) -> str:
        value = {"PublicIP": str(self.public_ip), "NodeName": self.node_name,
                 "BackendType": self.backend_type, "BackendData": _data_json(self)}
        if self.public_ipv6 is not None:
            value["PublicIPv6"] = str(self.public_ipv6)
        if self.ipv6_subnet is not None:
            value["IPv6Subnet"] = str(self.ipv6_subnet)
        if self.node_id:
            value["NodeID"] = self.node_id
        return json.dumps(value, sort_keys=True)

    @property
    def identity(self) -> str:
        """Who holds it, for messages: node name, node ID, public IP."""
        return f"{self.node_name} (node ID {self.node_id or 'none'}, public IP {self.public_ip})"

    @classmethod
    def from_json(cls, key: str, text) -> "Lease":
        subnet = parse_subnet_key(key)
        try:
            raw = json.loads(text)
            backend_type = str(raw.get("BackendType", "vxlan"))
            return cls(
                subnet=subnet,
                public_ip=ipaddress.IPv4Address(raw["PublicIP"]),
                node_name=str(raw.get("NodeName", "")),
                backend_type=backend_type,
                backend_data=_parse_data(backend_type, raw.get("BackendData") or {}),
                ipv6_subnet=ipaddress.IPv6Network(raw["IPv6Subnet"]) if raw.get("IPv6Subnet") else None,
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
