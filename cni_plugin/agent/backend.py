"""The overlay of one network on this node (VXLAN or host-gw), over datapath.overlay."""

import dataclasses
import ipaddress

from ..datapath import overlay, sysctl, vxlan
from ..datapath.netns import open_host


class OverlayBackend:
    def __init__(self, config, node, log=None):
        self.config = config
        self.node = node
        self.log = log
        self.ipr = open_host()
        self.plan = None

    def setup(self, lease) -> int:
        """Create/repair the device; returns the pod MTU."""
        underlay = overlay.interface_of_ip(self.ipr, self.node.public_ip)
        sysctl.enable_forwarding({4, 6} if lease.ipv6_subnet else {4})
        if self.config.backend_type == "host-gw":
            self.plan = overlay.Plan.for_network(self.config, lease, underlay)
            return underlay.mtu
        name = vxlan.vxlan_device_name(self.config.vni)
        addresses = [ipaddress.ip_interface(f"{lease.vtep_ip}/32")]
        if lease.ipv6_subnet is not None:
            addresses.append(ipaddress.ip_interface(f"{lease.vtep_ipv6}/128"))
        mtu = underlay.mtu - vxlan.VXLAN_OVERHEAD
        device = vxlan.ensure_vxlan(self.ipr, name, self.config.vni, self.node.public_ip, self.config.port,
                                    underlay.index, mtu, lease.vtep_mac, addresses)
        if device.action in ("recreated", "updated") and self.log is not None:
            self.log.warning(f"VXLAN device {name} {device.action}: {device.reason}",
                             extra={"network": self.config.name, "node": self.node.name})
        self.plan = overlay.Plan.for_network(self.config, lease, underlay, device.index, name)
        return mtu

    def _with(self, peers) -> overlay.Plan:
        return dataclasses.replace(self.plan, peers=tuple(peers))

    def apply(self, lease) -> overlay.Drift:
        return overlay.apply_peer(self.ipr, self.plan, lease)

    def remove(self, lease) -> overlay.Drift:
        return overlay.remove_peer(self.ipr, self.plan, lease)

    def reconcile(self, peers) -> overlay.Drift:
        """Full comparison; an OverlayError still carries the work done in .drift."""
        return overlay.reconcile(self.ipr, self._with(peers))

    def close(self) -> None:
        self.ipr.close()


def make_backend(config, node, log=None) -> OverlayBackend:
    return OverlayBackend(config, node, log)
