"""Backend "vxlan", as flannel does it: device weft.<VNI>, one L2 hop per remote node.

Per remote lease, on the device: permanent neighbour  remote .0 -> VtepMAC, permanent
FDB entry  VtepMAC -> remote PublicIP (NTF_SELF), then the route  remote subnet via
remote .0 dev weft.<VNI> onlink; a dual-stack lease adds the neighbour <v6subnet>:: ->
VtepMAC and the route <v6subnet> via <v6subnet>:: onlink on the same device (IPv4
underlay).  With DirectRouting, a remote whose PublicIP lies in the local underlay's
network gets a plain route (subnet via PublicIP dev <underlay>) and no neighbour/FDB.

Config keys: VNI [1], Port [8472], DirectRouting [false].  BackendData: {VNI, VtepMAC}.
"""

import ipaddress
import re
from dataclasses import dataclass

from ..checks import PORT_MAX, PORT_MIN, int_in
from ..datapath.vxlan_device import ensure_vxlan
from . import register
from .base import FDB, NEIGH, ROUTE, Backend, BackendDataError, Device, SetupResult

VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 (70 over IPv6)
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def device_name(vni: int) -> str:
    return f"weft.{vni}"


def vtep_ip(subnet):
    """A node's VTEP address in one of its subnets: the subnet's .0 (or ::)."""
    return subnet.network_address


def _int_in(section: dict, key: str, default: int, low: int, high: int) -> int:
    value = section.get(key, default)
    if not int_in(value, low, high):
        raise BackendDataError(f"Backend.{key} {value!r} must be an integer from {low} to {high}")
    return value


@dataclass(frozen=True)
class VxlanConfig:
    vni: int = 1
    port: int = 8472
    direct_routing: bool = False


@dataclass(frozen=True)
class VxlanData:
    """A lease's BackendData: the VNI and the node's VTEP MAC ("" when absent)."""

    vni: int = 1
    vtep_mac: str = ""


@register
class Vxlan(Backend):
    name = "vxlan"
    CONFIG_KEYS = ("VNI", "Port", "DirectRouting")
    owns_device_entries = True
    NOTIFIED_KINDS = frozenset({ROUTE, NEIGH, FDB})  # all in rtnetlink

    @classmethod
    def parse_config(cls, section: dict) -> VxlanConfig:
        direct = section.get("DirectRouting", False)
        if not isinstance(direct, bool):
            raise BackendDataError("Backend.DirectRouting must be true or false")
        return VxlanConfig(vni=_int_in(section, "VNI", 1, 1, 2 ** 24 - 1),
                           port=_int_in(section, "Port", 8472, PORT_MIN, PORT_MAX), direct_routing=direct)

    @classmethod
    def config_clash(cls, mine: VxlanConfig, theirs: VxlanConfig, other: str):
        if mine.vni == theirs.vni:
            return f"Backend.VNI {mine.vni} is already used by network {other}; every VXLAN network needs its own VNI"
        return None

    @classmethod
    def parse_lease_data(cls, data: dict) -> VxlanData:
        mac = str(data.get("VtepMAC", "")).lower()
        if mac and not _MAC.match(mac):
            raise BackendDataError(f"VtepMAC {mac!r} is not a MAC address")
        try:
            vni = int(data.get("VNI", 1))
        except (TypeError, ValueError):
            raise BackendDataError(f"VNI {data.get('VNI')!r} is not a number") from None
        return VxlanData(vni=vni, vtep_mac=mac)

    @classmethod
    def validate_peer_data(cls, config: VxlanConfig, data: VxlanData) -> None:
        """A unicast, non-zero VTEP MAC (a broadcast or multicast one would flood the
        peer's frames to every port) and the network's VNI."""
        from netaddr import EUI

        if not data.vtep_mac:
            raise BackendDataError("no VtepMAC")
        mac = EUI(data.vtep_mac)
        if int(mac) == 0:
            raise BackendDataError(f"VtepMAC {data.vtep_mac} is all zeros")
        if int(mac) == 0xFFFFFFFFFFFF:
            raise BackendDataError(f"VtepMAC {data.vtep_mac} is the broadcast address")
        if mac.words[0] & 1:
            raise BackendDataError(f"VtepMAC {data.vtep_mac} is a multicast address")
        if data.vni != config.vni:
            raise BackendDataError(f"VNI {data.vni}, but the network uses VNI {config.vni}")

    @classmethod
    def lease_data_json(cls, data: VxlanData) -> dict:
        return {"VNI": data.vni, "VtepMAC": data.vtep_mac}

    @classmethod
    def device_label(cls, data: VxlanData) -> str:
        return device_name(data.vni)

    @classmethod
    def local_lease_data(cls, config: VxlanConfig, node, network: str) -> VxlanData:
        return VxlanData(vni=config.vni, vtep_mac=node.vtep_mac(network))

    def setup(self, nl, network, lease, node, underlay) -> SetupResult:
        name = device_name(self.config.vni)
        addresses = [ipaddress.ip_interface(f"{vtep_ip(s)}/{s.max_prefixlen}") for s in lease.subnets]
        mtu = underlay.mtu - VXLAN_OVERHEAD
        device = ensure_vxlan(nl, name, self.config.vni, node.public_ip, self.config.port,
                              underlay.index, mtu, lease.backend_data.vtep_mac, addresses)
        return SetupResult(mtu, Device(device.index, name), device.action, device.reason)

    def check_peer(self, plan, lease) -> None:
        if not plan.device.index:
            raise ValueError("the plan has no VXLAN device")
        if not lease.backend_data.vtep_mac:
            raise ValueError("no VtepMAC")
        if lease.backend_data.vni != self.config.vni:
            raise ValueError(f"VNI {lease.backend_data.vni}, but the local device uses VNI {self.config.vni}")

    def peer_entries(self, plan, lease) -> list:
        mac = lease.backend_data.vtep_mac
        v6 = plan.ipv6 and lease.ipv6_subnet is not None
        direct4 = self.config.direct_routing and lease.public_ip in plan.underlay.network
        direct6 = plan.direct_ipv6(lease) if (v6 and self.config.direct_routing) else None
        neighbours, routes = [], []
        if lease.subnet is None:  # an IPv6-only lease
            pass
        elif direct4:
            routes.append((ROUTE, lease.subnet, (lease.public_ip, plan.underlay.index, False)))
        else:
            neighbours.append((NEIGH, vtep_ip(lease.subnet), mac))
            routes.append((ROUTE, lease.subnet, (vtep_ip(lease.subnet), plan.device.index, True)))
        if v6 and direct6 is not None:
            routes.append((ROUTE, lease.ipv6_subnet, (direct6, plan.underlay6.index, False)))
        elif v6:
            neighbours.append((NEIGH, vtep_ip(lease.ipv6_subnet), mac))
            routes.append((ROUTE, lease.ipv6_subnet, (vtep_ip(lease.ipv6_subnet), plan.device.index, True)))
        fdb = [(FDB, mac, lease.public_ip)] if neighbours else []
        return neighbours + fdb + routes

    def peer_owned(self, plan, lease) -> list:
        """FDB (only while it still points at the lease's PublicIP), then neighbours."""
        mac = getattr(lease.backend_data, "vtep_mac", "")
        owned = [(FDB, mac, lease.public_ip)] if mac else []
        return owned + [(NEIGH, s.network_address, mac) for s in lease.subnets]
