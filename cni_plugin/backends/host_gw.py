"""Backend "host-gw": every remote subnet via the remote node's PublicIP on the underlay.

The remote must share the underlay's L2 network (as with flannel's host-gw).  No
device, no config keys, no BackendData.
"""

from . import register
from .base import ROUTE, Backend


@register
class HostGw(Backend):
    name = "host-gw"
    NOTIFIED_KINDS = frozenset({ROUTE})

    def check_peer(self, plan, lease) -> None:
        if lease.public_ip not in plan.underlay.network:
            raise ValueError(f"host-gw needs every node on one L2 network, but {lease.public_ip} is "
                             f"outside {plan.underlay.name}'s {plan.underlay.network}; use the vxlan "
                             "backend (optionally with DirectRouting) instead")

    def peer_entries(self, plan, lease) -> list:
        out = [] if lease.subnet is None else [(ROUTE, lease.subnet, (lease.public_ip, plan.underlay.index, False))]
        if plan.ipv6 and lease.ipv6_subnet is not None:
            gateway = plan.direct_ipv6(lease)
            if gateway is None:
                raise ValueError(f"host-gw for IPv6 needs PublicIPv6 on the local underlay's IPv6 "
                                 f"network (peer has {lease.public_ipv6 or 'none'})")
            out.append((ROUTE, lease.ipv6_subnet, (gateway, plan.underlay6.index, False)))
        return out
