"""VXLAN devices in the kernel (over an IPv4 or an IPv6 underlay): create one with exactly
the wanted settings, or repair it."""

import ipaddress
from typing import NamedTuple

from .errors import LinkConflict


class VxlanDevice(NamedTuple):
    """What ensure_vxlan did.  action: "created", "recreated" (reason says which of
    VNI/local/dstport/learning/underlay differed: log it, the device's neighbours,
    FDB and routes went with it and the next reconcile restores them), "updated"
    (mtu/mac/state/addresses fixed in place; reason lists them) or "unchanged"."""

    index: int
    action: str
    reason: str = ""


def _identity_mismatch(link, vni, local_ip, port, underlay_index) -> list:
    """Differences that need a new device (the kernel cannot change them in place)."""
    local = "IFLA_VXLAN_LOCAL6" if ipaddress.ip_address(str(local_ip)).version == 6 else "IFLA_VXLAN_LOCAL"
    wanted = {"IFLA_VXLAN_ID": ("VNI", vni),
              local: ("local", str(local_ip)),
              "IFLA_VXLAN_PORT": ("dstport", port),
              "IFLA_VXLAN_LEARNING": ("learning", 0),
              "IFLA_VXLAN_LINK": ("underlay ifindex", underlay_index)}
    return [f"{label} {link.data.get(attr)} != {value}" for attr, (label, value) in wanted.items()
            if link.data.get(attr) != value]


def _fix_link(nl, link, mtu: int, mac: str) -> list:
    changes = {}
    if link.mtu != mtu:
        changes["mtu"] = mtu
    if link.address != mac.lower():
        changes["address"] = mac
    if not link.up:
        changes["state"] = "up"
    if changes:
        nl.set_link(link.index, **changes)
    return [f"{key} -> {value}" for key, value in changes.items()]


def fix_addresses(nl, index: int, addresses: list) -> list:
    """Exactly `addresses` as global addresses (link-local ones are left alone)."""
    wanted = {ipaddress.ip_interface(str(a)) for a in addresses}
    have = set()
    changes = []
    for _, current in nl.addresses(index=index):
        if current in wanted:
            have.add(current)
            continue
        nl.delete_address(index, current)
        changes.append(f"removed address {current}")
    for address in sorted(wanted - have, key=str):
        nl.add_address(index, address)
        changes.append(f"added address {address}")
    return changes


def ensure_vxlan(nl, name: str, vni: int, local_ip, port: int, underlay_index: int, mtu: int,
                 mac: str, addresses: list) -> VxlanDevice:
    """Make `name` a VXLAN device with exactly these settings (idempotent).

    A device with a different VNI/local/dstport/learning/underlay is deleted and
    recreated (action "recreated", reason says why); a link of that name that is not
    VXLAN is a LinkConflict (never deleted).  `addresses`: ip_interface values, e.g.
    <subnet>.0/32 and <v6subnet>::/128 (IPv6 without DAD); other global addresses
    on the device are removed.  NetlinkError on any refused request."""
    action, reason = "unchanged", ""
    link = nl.link(name)
    if link is not None and link.kind != "vxlan":
        raise LinkConflict(f"link {name} exists and is a {link.kind or 'link of unknown kind'}, "
                           "not VXLAN; remove it (weft will not delete a device it did not make)")
    if link is not None:
        mismatch = _identity_mismatch(link, vni, local_ip, port, underlay_index)
        if mismatch:
            nl.delete_link(link.index)
            link, action, reason = None, "recreated", "; ".join(mismatch)
    if link is None:
        nl.add_vxlan(name, vni, local_ip, port, underlay_index, mtu, mac)
        link = nl.link(name)
        action = "created" if action == "unchanged" else action
    changes = _fix_link(nl, link, mtu, mac) + fix_addresses(nl, link.index, addresses)
    if changes and action == "unchanged":
        action, reason = "updated", "; ".join(changes)
    return VxlanDevice(link.index, action, reason)


def remove_vxlan(nl, name: str) -> bool:
    """Delete the VXLAN device `name` if there is one (a node that lost an underlay
    family); a link of that name of another kind is left alone.  True if deleted."""
    link = nl.link(name)
    if link is None or link.kind != "vxlan":
        return False
    nl.delete_link(link.index)
    return True
