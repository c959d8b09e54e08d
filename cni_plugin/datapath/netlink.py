"""The agent's netlink client: links, addresses, routes, neighbours, FDB, VXLAN devices.

A thin layer over pyroute2's IPRoute that speaks plain values (ipaddress objects,
MAC strings, ifindexes) and raises errors.NetlinkError, so nothing above datapath/
sees pyroute2.  pyroute2 serves where its speed suffices: devices, one write per
event, the underlay's default route.  Where it does not, raw rtnetlink over the one
codec (nlcodec.py) serves instead: the per-pod path (rtnl.py), many writes at once
(batch.py, through batch()) and the reads of weft's own entries (owned_dump.py):
routes(), permanent_neighbours() and fdb() hand their reads to it, so the reconcile
has one reader whichever client it is given.

Ownership rules (what the agent may read back as its own and delete) are the
caller's: this module does what it is asked, and reads only what it is asked for.
"""

import errno
import ipaddress
from contextlib import contextmanager
from typing import NamedTuple, Optional

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as _PyrouteError

from .batch import Batch
from .constants import (AF_INET, AF_INET6, FAMILY, IFA_F_NODAD, IFF_UP, NTF_SELF, NUD_PERMANENT,
                        RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, RTNH_F_ONLINK, WEFT_RTPROT)
from .errors import NetlinkError
from .nlcodec import RouteEntry
from .owned_dump import OwnedDump

__all__ = ["LinkInfo", "Netlink", "RouteEntry", "open_agent"]

_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV)


class LinkInfo(NamedTuple):
    index: int
    name: str
    kind: str
    mtu: int
    up: bool
    address: str
    data: dict  # IFLA_INFO_DATA attributes by name (e.g. IFLA_VXLAN_ID)


@contextmanager
def _refused(what: str):
    try:
        yield
    except _PyrouteError as exc:
        raise NetlinkError(exc.code, what) from None


def _link_info(msg) -> LinkInfo:
    info = msg.get("IFLA_LINKINFO")
    data = info.get("IFLA_INFO_DATA") if info else None
    return LinkInfo(index=msg["index"], name=msg.get("IFLA_IFNAME"),
                    kind=(info.get("IFLA_INFO_KIND") if info else None) or "",
                    mtu=msg.get("IFLA_MTU"), up=bool(msg["flags"] & IFF_UP),
                    address=(msg.get("IFLA_ADDRESS") or "").lower(),
                    data={name: value for name, value in (data["attrs"] if data else [])})


class Netlink:
    """One IPRoute socket in this namespace (or bound to `netns_path`)."""

    def __init__(self, netns_path: str = None):
        self.ipr = IPRoute(netns=netns_path, flags=0) if netns_path else IPRoute()
        self.netns_path = netns_path
        self._batch = None
        self._reader = None

    def close(self) -> None:
        for raw in (self._batch, self._reader):
            if raw is not None:
                raw.close()
        self.ipr.close()

    def batch(self):
        """A batch.Batch (same namespace) for many writes in few round trips."""
        if self._batch is None:
            self._batch = Batch(self.netns_path)
        return self._batch

    def reader(self) -> OwnedDump:
        """The reconcile's reader (owned_dump.py, same namespace): weft's own entries."""
        if self._reader is None:
            self._reader = OwnedDump(self.netns_path)
        return self._reader

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- links -------------------------------------------------------------------
    def link(self, name: str = None, index: int = None) -> Optional[LinkInfo]:
        query = {"ifname": name} if name is not None else {"index": index}
        try:
            return _link_info(self.ipr.link("get", **query)[0])
        except _PyrouteError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise NetlinkError(exc.code, f"get link {name or index}") from None

    def add_vxlan(self, name: str, vni: int, local_ip, port: int, underlay_index: int, mtu: int,
                  mac: str) -> None:
        with _refused(f"create VXLAN device {name} (VNI {vni}, local {local_ip}, dstport {port}, "
                      f"underlay ifindex {underlay_index})"):
            local = {"vxlan_local6" if ipaddress.ip_address(str(local_ip)).version == 6 else "vxlan_local":
                     str(local_ip)}
            self.ipr.link("add", ifname=name, kind="vxlan", vxlan_id=vni, **local,
                          vxlan_port=port, vxlan_learning=0, vxlan_link=underlay_index, mtu=mtu,
                          address=mac)

    def add_link_of_kind(self, name: str, kind: str) -> None:
        """A bare link of a kind that needs no attributes (e.g. wireguard)."""
        with _refused(f"create {kind} link {name}"):
            self.ipr.link("add", ifname=name, kind=kind)

    def set_link(self, index: int, **changes) -> None:
        """changes: mtu=, address=, state="up"."""
        with _refused(f"set link #{index} {changes}"):
            self.ipr.link("set", index=index, **changes)

    def delete_link(self, index: int) -> None:
        with _refused(f"delete link #{index}"):
            self.ipr.link("del", index=index)

    # -- addresses -----------------------------------------------------------------
    def addresses(self, index: int = None, version: int = None, scope=RT_SCOPE_UNIVERSE,
                  skip_flags: int = 0) -> list:
        """[(ifindex, ip_interface)] of global addresses (of one link, of one family);
        skip_flags: leave out addresses carrying any of these IFA_F_* flags (e.g.
        temporary, deprecated: datapath/underlay.py)."""
        query = {}
        if index is not None:
            query["index"] = index
        if version is not None:
            query["family"] = FAMILY[version]
        found = []
        with _refused("list addresses"):
            for msg in self.ipr.addr("dump", **query):
                if index is not None and msg["index"] != index:
                    continue
                if scope is not None and msg["scope"] != scope:
                    continue
                if skip_flags and (msg.get("IFA_FLAGS") or msg["flags"]) & skip_flags:
                    continue
                local = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
                found.append((msg["index"], ipaddress.ip_interface(f"{local}/{msg['prefixlen']}")))
        return found

    def add_address(self, index: int, address) -> None:
        extra = {"flags": IFA_F_NODAD} if address.version == 6 else {}
        try:
            self.ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen,
                          family=FAMILY[address.version], **extra)
        except _PyrouteError as exc:
            if exc.code != errno.EEXIST:
                raise NetlinkError(exc.code, f"add address {address} to link #{index}") from None

    def delete_address(self, index: int, address) -> None:
        with _refused(f"delete address {address} from link #{index}"):
            self.ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)

    # -- routes ----------------------------------------------------------------------
    def routes(self, version: int, proto: int = None) -> list:
        """RouteEntry of every main-table route of one family (of one protocol)."""
        return self.reader().routes(version, proto)

    def default_route_oif(self, version: int) -> Optional[int]:
        """ifindex of the main table's default route with the lowest metric."""
        best = None
        with _refused("list routes"):
            for msg in self.ipr.route("dump", family=FAMILY[version]):
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
        return None if best is None else best[1]

    def replace_route(self, dst, gateway, oif: int, onlink: bool) -> None:
        """gateway None: a device route (e.g. into a WireGuard device)."""
        if gateway is not None and gateway.version != dst.version:  # IPv4 via an IPv6 next hop (RTA_VIA)
            via = {"via": {"family": AF_INET6, "addr": str(gateway)}}
        else:
            via = {"gateway": str(gateway)} if gateway is not None else {}
        with _refused(f"replace route {dst} via {gateway or 'the device'}"):
            self.ipr.route("replace", dst=str(dst), oif=oif, table=RT_TABLE_MAIN,
                           proto=WEFT_RTPROT, flags=RTNH_F_ONLINK if onlink else 0, **via)

    def delete_weft_route(self, dst) -> bool:
        """Delete the route to dst of weft's protocol (never someone else's); False if gone."""
        return self._delete(f"delete route {dst}", self.ipr.route, "del", dst=str(dst),
                            table=RT_TABLE_MAIN, proto=WEFT_RTPROT)

    # -- neighbours and FDB ------------------------------------------------------------
    def permanent_neighbours(self, ifindex: int) -> dict:
        """{ip_address: mac} of the permanent neighbours on the link."""
        return self.reader().permanent_neighbours(ifindex)

    def fdb(self, ifindex: int) -> dict:
        """{mac: (dst ip_address or None, permanent)} of the link's own FDB entries."""
        return self.reader().fdb(ifindex)

    def replace_neighbour(self, ifindex: int, ip, mac: str) -> None:
        with _refused(f"replace neighbour {ip} lladdr {mac}"):
            self.ipr.neigh("replace", ifindex=ifindex, dst=str(ip), lladdr=mac, state=NUD_PERMANENT,
                           family=AF_INET if ip.version == 4 else AF_INET6)

    def delete_neighbour(self, ifindex: int, ip) -> bool:
        return self._delete(f"delete neighbour {ip}", self.ipr.neigh, "del", ifindex=ifindex, dst=str(ip),
                            family=AF_INET if ip.version == 4 else AF_INET6)

    def replace_fdb(self, ifindex: int, mac: str, dst) -> None:
        # pyroute2 0.9 fills in NTF_SELF/NUD_PERMANENT only for add/append/del;
        # "replace" without flags=NTF_SELF goes to the (absent) bridge master: EOPNOTSUPP.
        with _refused(f"replace fdb {mac} dst {dst}"):
            self.ipr.fdb("replace", ifindex=ifindex, lladdr=mac, dst=str(dst), state=NUD_PERMANENT,
                         flags=NTF_SELF)

    def delete_fdb(self, ifindex: int, mac: str, dst=None) -> bool:
        extra = {"dst": str(dst)} if dst is not None else {}
        return self._delete(f"delete fdb {mac}", self.ipr.fdb, "del", ifindex=ifindex, lladdr=mac, **extra)

    @staticmethod
    def _delete(what: str, call, *args, **kwargs) -> bool:
        try:
            call(*args, **kwargs)
        except _PyrouteError as exc:
            if exc.code in _GONE:
                return False
            raise NetlinkError(exc.code, what) from None
        return True


def open_agent(netns_path: str = None) -> Netlink:
    """The agent's client for this namespace (or a test's view of a node's)."""
    return Netlink(netns_path)
