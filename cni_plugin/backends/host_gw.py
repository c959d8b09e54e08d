"""Backend "host-gw": every remote subnet via the remote node's underlay address.

The remote must share the underlay's L2 network (as with flannel's host-gw).  Per inner
family, the next hop is the remote's address of the underlay family that carries it
(backends/engine.py underlay_route): an IPv4 subnet may go via an IPv6 next hop (RTA_VIA,
so dual-stack pods work over an IPv6-only underlay), but the kernel has no IPv6 route
via an IPv4 next hop: an IPv6 subnet whose only common underlay with the peer is IPv4
is not routed (peer_gaps says so in the status; the IPv4 subnet is still routed).  No
device, no config keys, no BackendData.
"""

from . import register
from .base import ROUTE, Backend


@register
class HostGw(Backend):
    name = "host-gw"
    NOTIFIED_KINDS = frozenset({ROUTE})

    @staticmethod
    def _hops(plan, lease):
        """[(subnet, (peer address, underlay ifindex) or None)] per inner family."""
        route = plan.route(lease)
        return [(subnet, plan.direct_hop(lease, inner, route[inner])) for subnet, inner in plan.inner_subnets(lease)]

    def check_peer(self, plan, lease) -> None:
        route = plan.route(lease)
        for _, inner in plan.inner_subnets(lease):
            underlay = route[inner]
            if (inner, underlay) == (6, 4):
                continue  # a gap (peer_gaps), not a reason to leave the IPv4 subnet unrouted
            local, address = plan.underlay_of(underlay), plan.peer_address(lease, underlay)
            if address not in local.network:
                raise ValueError(f"host-gw needs every node on one L2 network, but {address} is "
                                 f"outside {local.name}'s {local.network}; use the vxlan "
                                 "backend (optionally with DirectRouting) instead")

    def peer_entries(self, plan, lease) -> list:
        return [(ROUTE, subnet, (hop[0], hop[1], False)) for subnet, hop in self._hops(plan, lease)
                if hop is not None]

    def peer_gaps(self, plan, lease) -> list:
        return [f"{subnet} not routed: host-gw has no IPv6 route via an IPv4 next hop and node "
                f"{lease.node_name or '?'} shares only an IPv4 underlay with this node "
                "(give both an IPv6 underlay address, or use vxlan/wireguard)"
                for subnet, hop in self._hops(plan, lease) if hop is None]
