"""Backend "vxlan", as flannel does it: one L2 hop per remote node, one device per
underlay family: weft.<VNI> over IPv4 (local PublicIP), weft-v6.<VNI> over IPv6 (local
PublicIPv6), both with the node's VTEP MAC and MTU underlay - 50 / - 70.

Per remote lease and inner family, on the device of the underlay family that carries it
(backends/engine.py underlay_route: each its own when both nodes have both, else the
one they share): permanent neighbour  remote .0 (or <v6subnet>::) -> VtepMAC, permanent
FDB entry  VtepMAC -> the remote's address of that family (NTF_SELF, one per device
used), then the route  remote subnet via remote .0 dev <device> onlink.  With
DirectRouting, a remote whose address lies in the local underlay's network gets a plain
route (subnet via that address dev <underlay>; an IPv4 subnet may go via an IPv6 next
hop) and no neighbour/FDB.

Config keys: VNI [1], Port [8472], DirectRouting [false].  BackendData: {VNI, VtepMAC}.
"""

import ipaddress
import re
from dataclasses import dataclass

from ..checks import PORT_MAX, PORT_MIN, int_in
from ..datapath.vxlan_device import ensure_vxlan, remove_vxlan
from . import register
from .base import FDB, NEIGH, ROUTE, Backend, BackendDataError, Device, SetupResult

OVERHEAD = {4: 50, 6: 70}  # outer IPv4 20 / IPv6 40 + UDP 8 + VXLAN 8 + inner Ethernet 14
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def device_name(vni: int, underlay: int = 4) -> str:
    """weft.<VNI> over an IPv4 underlay, weft-v6.<VNI> over an IPv6 one."""
    return f"weft.{vni}" if underlay == 4 else f"weft-v6.{vni}"


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

    def setup(self, nl, network, lease, node, underlay, underlay6=None) -> SetupResult:
        """weft.<VNI> over the IPv4 underlay, weft-v6.<VNI> over the IPv6 one (each when
        the node has that family); a device of a family the node no longer has is
        removed.  The pod MTU leaves room for the larger overhead of the two."""
        addresses = [ipaddress.ip_interface(f"{vtep_ip(s)}/{s.max_prefixlen}") for s in lease.subnets]
        made, mtus, notes = {}, [], []
        for version, local, public in ((4, underlay, node.public_ip), (6, underlay6, node.public_ipv6)):
            name = device_name(self.config.vni, version)
            if local is None or public is None:
                remove_vxlan(nl, name)
                continue
            mtu = local.mtu - OVERHEAD[version]
            # the node's own .0 (and ::) on the first device only: it answers on them from any
            device = ensure_vxlan(nl, name, self.config.vni, public, self.config.port,
                                  local.index, mtu, lease.backend_data.vtep_mac, [] if made else addresses)
            made[version] = Device(device.index, name)
            mtus.append(mtu)
            if device.action in ("recreated", "updated"):
                notes.append((device.action, f"{name}: {device.reason}"))
        action = notes[0][0] if notes else "unchanged"
        return SetupResult(min(mtus), made.get(4, Device()), action, "; ".join(n[1] for n in notes),
                           device6=made.get(6, Device()))

    def check_peer(self, plan, lease) -> None:
        if not plan.devices:
            raise ValueError("the plan has no VXLAN device")
        if not lease.backend_data.vtep_mac:
            raise ValueError("no VtepMAC")
        if lease.backend_data.vni != self.config.vni:
            raise ValueError(f"VNI {lease.backend_data.vni}, but the local device uses VNI {self.config.vni}")

    @staticmethod
    def _device(plan, version: int) -> Device:
        return plan.device if version == 4 else plan.device6

    def peer_entries(self, plan, lease) -> list:
        """Per inner family: over the underlay family engine.underlay_route picks, a
        neighbour and an onlink route on that family's device (or, with DirectRouting and
        the peer on the local underlay's network, a plain route via its address); one FDB
        entry per device used."""
        mac = lease.backend_data.vtep_mac
        route = plan.route(lease)
        neighbours, routes, fdb = [], [], {}
        for subnet, inner in plan.inner_subnets(lease):
            underlay = route[inner]
            direct = plan.direct_hop(lease, inner, underlay) if self.config.direct_routing else None
            if direct is not None:
                routes.append((ROUTE, subnet, (direct[0], direct[1], False)))
                continue
            device = self._device(plan, underlay)
            neighbours.append((NEIGH, (device.index, vtep_ip(subnet)), mac))
            routes.append((ROUTE, subnet, (vtep_ip(subnet), device.index, True)))
            fdb[device.index] = plan.peer_address(lease, underlay)
        return neighbours + [(FDB, (index, mac), dst) for index, dst in fdb.items()] + routes

    def peer_owned(self, plan, lease) -> list:
        """On each device: FDB (only while it still points at the lease's address of that
        device's family), then neighbours."""
        mac = getattr(lease.backend_data, "vtep_mac", "")
        owned, neighbours = [], []
        for version in (4, 6):
            device, address = self._device(plan, version), plan.peer_address(lease, version)
            if not device.index:
                continue
            if mac and address is not None:
                owned.append((FDB, (device.index, mac), address))
            neighbours += [(NEIGH, (device.index, s.network_address), mac) for s in lease.subnets]
        return owned + neighbours
