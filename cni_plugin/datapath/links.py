"""Bridge and veth links on the host side of an attachment."""

import errno
import ipaddress

from pyroute2.netlink.exceptions import NetlinkError

from ..errors import IO_FAILURE, LINK_CONFLICT, CniError
from . import sysctl


def lookup(ipr, name: str):
    """The link message for `name`, or None."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            return None
        raise


def kind_of(link) -> str:
    info = link.get("IFLA_LINKINFO")
    return (info.get("IFLA_INFO_KIND") if info else None) or ""


def ensure_bridge(ipr, name: str, mtu: int) -> int:
    """The bridge's ifindex; created (up, with `mtu`) when missing."""
    link = lookup(ipr, name)
    if link is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", mtu=mtu)
            # the gateway's link-local must answer neighbour discovery at once, not
            # after a second of DAD (the first packets of every new node's pods)
            sysctl.set_interface("ipv6", name, "accept_dad", "0")
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # a concurrent ADD made it first
                raise CniError(IO_FAILURE, f"cannot create bridge {name}: {exc}")
        link = lookup(ipr, name)
    if link is None or kind_of(link) != "bridge":
        raise CniError(LINK_CONFLICT, f"link {name} exists and is not a bridge "
                       f"(kind {kind_of(link) or 'unknown'}); set `bridge` to another name")
    index = link["index"]
    if link.get("mtu") != mtu or link.get("state") != "up":
        ipr.link("set", index=index, mtu=mtu, state="up")
    return index


def ensure_gateway_address(ipr, bridge: str, index: int, gateway: ipaddress._BaseAddress,
                           network: ipaddress._BaseNetwork, force: bool) -> None:
    """Put gateway/prefix on the bridge.  A different address of the same subnet is an
    error unless `force` (then it is replaced); addresses of other subnets stay."""
    family = 4 if gateway.version == 4 else 6
    wanted = ipaddress.ip_interface(f"{gateway}/{network.prefixlen}")
    for msg in ipr.addr("dump", index=index):
        if msg.get("family") != (2 if family == 4 else 10):
            continue
        have = ipaddress.ip_interface(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}")
        if have == wanted:
            return
        if have.network.overlaps(network):
            if not force:
                raise CniError(LINK_CONFLICT, f"bridge {bridge} already has address {have}, not "
                               f"{wanted}; remove it or set forceAddress: true")
            ipr.addr("del", index=index, address=str(have.ip), prefixlen=have.network.prefixlen)
    try:
        ipr.addr("add", index=index, address=str(wanted.ip), prefixlen=network.prefixlen,
                 **({"flags": 0x02} if family == 6 else {}))  # IFA_F_NODAD on IPv6
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:  # a concurrent ADD added it first
            raise CniError(IO_FAILURE, f"cannot add {wanted} to bridge {bridge}: {exc}")


def create_veth(ipr, host_name: str, netns_path: str, ifname: str, mtu: int) -> int:
    """A veth pair: host_name here, its peer named `ifname` inside netns_path."""
    try:
        ipr.link("add", ifname=host_name, kind="veth", mtu=mtu,
                 peer={"ifname": ifname, "net_ns_fd": netns_path, "mtu": mtu})
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            raise CniError(LINK_CONFLICT, f"cannot create veth {host_name} with peer {ifname} in "
                           f"{netns_path}: a link of that name already exists (in the host or the "
                           "container)")
        raise CniError(IO_FAILURE, f"cannot create veth {host_name}: {exc}")
    return lookup(ipr, host_name)["index"]


def attach_to_bridge(ipr, index: int, bridge_index: int, hairpin: bool) -> None:
    ipr.link("set", index=index, master=bridge_index)
    if hairpin:
        ipr.brport("set", index=index, mode=1)
    ipr.link("set", index=index, state="up")


def delete(ipr, name: str) -> bool:
    """Delete link `name`; False when it did not exist."""
    try:
        ipr.link("del", ifname=name)
        return True
    except NetlinkError as exc:
        if exc.code in (errno.ENODEV, errno.ENOENT):
            return False
        raise


def veths_on_bridge(ipr, bridge_index: int) -> list:
    """Names of the veth links enslaved to the bridge."""
    return [link.get("ifname") for link in ipr.link("dump")
            if link.get("master") == bridge_index and kind_of(link) == "veth"]
