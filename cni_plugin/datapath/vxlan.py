"""The VXLAN device of one network: weft.<VNI>, local = public IP, nolearning."""

import errno
import ipaddress
from typing import NamedTuple

from pyroute2.netlink.exceptions import NetlinkError

from .overlay import AF_INET, AF_INET6, IFA_F_NODAD, RT_SCOPE_UNIVERSE, OverlayError

VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 (70 over IPv6)


def lookup(ipr, name: str):
    """pyroute2's link message for `name`, or None."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def kind_of(link) -> str:
    info = link.get("IFLA_LINKINFO")
    return (info.get("IFLA_INFO_KIND") if info else None) or ""


def vxlan_device_name(vni: int) -> str:
    return f"weft.{vni}"


class VxlanDevice(NamedTuple):
    """What ensure_vxlan did.  action: "created", "recreated" (reason says which of
    VNI/local/dstport/learning/underlay differed: log it, the device's neighbours,
    FDB and routes went with it and the next reconcile restores them), "updated"
    (mtu/mac/state/addresses fixed in place; reason lists them) or "unchanged"."""

    index: int
    action: str
    reason: str = ""


def _vxlan_data(link) -> dict:
    info = link.get("IFLA_LINKINFO")
    data = info.get("IFLA_INFO_DATA") if info else None
    return {name: value for name, value in (data["attrs"] if data else [])}


def _identity_mismatch(link, vni, local_ip, port, underlay_index) -> list:
    """Differences that need a new device (the kernel cannot change them in place)."""
    data = _vxlan_data(link)
    wanted = {"IFLA_VXLAN_ID": ("VNI", vni),
              "IFLA_VXLAN_LOCAL": ("local", str(local_ip)),
              "IFLA_VXLAN_PORT": ("dstport", port),
              "IFLA_VXLAN_LEARNING": ("learning", 0),
              "IFLA_VXLAN_LINK": ("underlay ifindex", underlay_index)}
    return [f"{label} {data.get(attr)} != {value}" for attr, (label, value) in wanted.items()
            if data.get(attr) != value]


def _create(ipr, name, vni, local_ip, port, underlay_index, mtu, mac) -> None:
    try:
        ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, vxlan_local=str(local_ip),
                 vxlan_port=port, vxlan_learning=0, vxlan_link=underlay_index, mtu=mtu,
                 address=mac)
    except NetlinkError as exc:
        raise OverlayError(f"cannot create VXLAN device {name} (VNI {vni}, local {local_ip}, "
                           f"dstport {port}, underlay ifindex {underlay_index}): {exc}") from None


def _fix_link(ipr, link, mtu: int, mac: str) -> list:
    changes = {}
    if link.get("IFLA_MTU") != mtu:
        changes["mtu"] = mtu
    if (link.get("IFLA_ADDRESS") or "").lower() != mac.lower():
        changes["address"] = mac
    if not link["flags"] & 1:  # IFF_UP
        changes["state"] = "up"
    if changes:
        ipr.link("set", index=link["index"], **changes)
    return [f"{key} -> {value}" for key, value in changes.items()]


def _fix_addresses(ipr, index: int, addresses: list) -> list:
    """Exactly `addresses` as global addresses (link-local ones are left alone)."""
    wanted = {ipaddress.ip_interface(str(a)) for a in addresses}
    have = set()
    changes = []
    for msg in ipr.addr("dump", index=index):
        if msg["index"] != index or msg["scope"] != RT_SCOPE_UNIVERSE:
            continue
        current = ipaddress.ip_interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
        if current in wanted:
            have.add(current)
            continue
        ipr.addr("del", index=index, address=str(current.ip), prefixlen=current.network.prefixlen)
        changes.append(f"removed address {current}")
    for address in sorted(wanted - have, key=str):
        extra = {"flags": IFA_F_NODAD} if address.version == 6 else {}
        try:
            ipr.addr("add", index=index, address=str(address.ip),
                     prefixlen=address.network.prefixlen,
                     family=AF_INET if address.version == 4 else AF_INET6, **extra)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
        changes.append(f"added address {address}")
    return changes


def ensure_vxlan(ipr, name: str, vni: int, local_ip, port: int, underlay_index: int, mtu: int,
                 mac: str, addresses: list) -> VxlanDevice:
    """Make `name` a VXLAN device with exactly these settings (idempotent).

    A device with a different VNI/local/dstport/learning/underlay is deleted and
    recreated (action "recreated", reason says why); a link of that name that is not
    VXLAN is an OverlayError (never deleted).  `addresses`: ip_interface values, e.g.
    <subnet>.0/32 and <v6subnet>::/128 (added with IFA_F_NODAD); other global
    addresses on the device are removed."""
    action, reason = "unchanged", ""
    link = lookup(ipr, name)
    if link is not None and kind_of(link) != "vxlan":
        raise OverlayError(f"link {name} exists and is a {kind_of(link) or 'link of unknown kind'}, "
                           "not VXLAN; remove it (weft will not delete a device it did not make)")
    if link is not None:
        mismatch = _identity_mismatch(link, vni, local_ip, port, underlay_index)
        if mismatch:
            ipr.link("del", index=link["index"])
            link, action, reason = None, "recreated", "; ".join(mismatch)
    if link is None:
        _create(ipr, name, vni, local_ip, port, underlay_index, mtu, mac)
        link = lookup(ipr, name)
        action = "created" if action == "unchanged" else action
    try:
        changes = _fix_link(ipr, link, mtu, mac) + _fix_addresses(ipr, link["index"], addresses)
    except NetlinkError as exc:
        raise OverlayError(f"cannot configure VXLAN device {name}: {exc}") from None
    if changes and action == "unchanged":
        action, reason = "updated", "; ".join(changes)
    return VxlanDevice(link["index"], action, reason)
