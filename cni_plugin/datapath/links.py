"""Bridge and veth links on the host side of an attachment (over datapath.rtnl)."""

import errno
import ipaddress

from . import sysctl
from .errors import DatapathError, LinkConflict, NetlinkError
from .mac import random_mac


def ensure_bridge(rt, name: str, mtu: int):
    """The bridge's Link; created (up, with `mtu`) when missing."""
    link = rt.link(name)
    if link is None:
        try:
            rt.add_bridge(name, mtu, random_mac())
            # the gateway's link-local must answer neighbour discovery at once, not
            # after a second of DAD (the first packets of every new node's pods)
            sysctl.set_interface("ipv6", name, "accept_dad", "0")
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # a concurrent ADD made it first
                raise DatapathError(f"cannot create bridge {name}: {exc.strerror}") from None
        link = rt.link(name)
    if link is None or link.kind != "bridge":
        raise LinkConflict(f"link {name} exists and is not a bridge "
                       f"(kind {(link.kind if link else '') or 'unknown'}); set `bridge` to another name")
    if link.mtu != mtu or not link.up:
        rt.set_link(link.index, mtu=mtu, up=True)
    return link


def ensure_gateway_address(rt, bridge: str, index: int, gateway, network, force: bool) -> None:
    """Put gateway/prefix on the bridge.  A different address of the same subnet is an
    error unless `force` (then it is replaced); addresses of other subnets stay."""
    wanted = ipaddress.ip_interface(f"{gateway}/{network.prefixlen}")
    for have in rt.addresses(index):
        if have.version != wanted.version:
            continue
        if have == wanted:
            return
        if have.network.overlaps(network):
            if not force:
                raise LinkConflict(f"bridge {bridge} already has address {have}, not "
                               f"{wanted}; remove it or set forceAddress: true")
            rt.delete_address(index, have)
    try:
        rt.add_address(index, wanted, nodad=wanted.version == 6)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:  # a concurrent ADD added it first
            raise DatapathError(f"cannot add {wanted} to bridge {bridge}: {exc.strerror}") from None


def create_veth(rt, host_name: str, netns, ifname: str, mtu: int):
    """A veth pair: host_name here, its peer named `ifname` inside the pod's namespace
    (netns.PodNetns)."""
    try:
        rt.add_veth(host_name, ifname, netns.ref, mtu)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise LinkConflict(f"cannot create veth {host_name} with peer {ifname} in "
                           f"{netns.path}: a link of that name already exists (in the host or the "
                               "container)") from None
        raise DatapathError(f"cannot create veth {host_name}: {exc.strerror}") from None
    return rt.link(host_name)


def attach_to_bridge(rt, index: int, bridge_index: int, hairpin: bool) -> None:
    rt.set_link(index, master=bridge_index, up=not hairpin)
    if hairpin:  # a bridge-port option: only once it is a port
        rt.set_link(index, hairpin=True, up=True)


def delete(rt, name: str) -> bool:
    """Delete link `name`; False when it did not exist."""
    link = rt.link(name)
    if link is None:
        return False
    try:
        rt.delete_link(link.index)
        return True
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise


def veths_on_bridge(rt, bridge_index: int) -> list:
    """Names of the veth links enslaved to the bridge."""
    return [link.name for link in rt.links() if link.master == bridge_index and link.kind == "veth"]


def unattached_veths(rt, prefix: str) -> list:
    """Names of veth links starting with `prefix` that are no bridge's port."""
    return [link.name for link in rt.links()
            if link.kind == "veth" and link.master is None and link.name.startswith(prefix)]


def retire(rt, name: str, retired: str):
    """Cut link `name` off: down and off its bridge (from then on nothing can send
    from it on the bridge), then renamed `retired` (its name is free for a new
    attachment).  Its index, or None when there is no link `name`."""
    link = rt.link(name)
    if link is None:
        return None
    rt.set_link(link.index, up=False, master=0)
    try:
        rt.set_link(link.index, name=retired)
    except NetlinkError as exc:
        raise DatapathError(f"cannot rename {name} to {retired} for its teardown: {exc.strerror}") from None
    return link.index
