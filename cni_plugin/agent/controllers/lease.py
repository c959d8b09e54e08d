"""The lease controller: this node's subnet lease for one network, and the subnet file.

Acquires (or finds again) the lease, renews it, notices when another node's name
appears on our key (a conflict: the datapath stays), and writes the subnet file the
plugin reads once the backend said which MTU pods get.
"""

import ipaddress

from ... import paths
from ...subnet import subnet_file
from ...subnet.lease import ConfigError, Lease, NetworkConfig
from ...subnet.lease_manager import LeaseConflict, LeaseManager
from ..runtime import Controller
from . import register

RENEW_EVERY_MAX = 3600.0


@register
class LeaseController(Controller):
    name = "lease"
    order = 10

    def prepare(self):
        agent = self.agent
        if agent.config is None:
            text = agent.registry.get_network_config(agent.name)
            if text is None:
                raise ConfigError(f"network {agent.name}: no config at "
                                  f"{agent.registry.config_key(agent.name)}; set it with "
                                  f"weftctl network set {agent.name} --config FILE")
            config = NetworkConfig.parse(agent.name, text)
            node = agent.node
            template = Lease(subnet=ipaddress.IPv4Network("0.0.0.0/32"), public_ip=node.public_ip,
                             node_name=node.name, backend_type=config.backend_type,
                             backend_data=config.backend_class.local_lease_data(config.backend, node, agent.name),
                             public_ipv6=node.public_ipv6)
            self.manager = LeaseManager(agent.registry, config, template, agent.options.state_dir)
            agent.config = config
        if agent.held is None:
            agent.held = self.manager.acquire(agent.options.lease_ttl)
            agent.conflict = None
            agent.metrics.conflict.labels(agent.name).set(0)
            agent.log.info("lease acquired", extra=agent.extra())

    def after_prepare(self):
        agent = self.agent
        lease, config = agent.held.lease, agent.config
        gateway = lease.subnet.network_address + 1
        v6 = None
        if lease.ipv6_subnet is not None:
            v6 = ipaddress.IPv6Interface(f"{lease.ipv6_subnet.network_address + 1}/{lease.ipv6_subnet.prefixlen}")
        subnet_file.write(paths.subnet_file(agent.options.run_dir, agent.name), subnet_file.SubnetLease(
            network=config.network,
            subnet=ipaddress.IPv4Interface(f"{gateway}/{lease.subnet.prefixlen}"),
            mtu=config.mtu or agent.mtu, ipmasq=config.ip_masq,
            ipv6_network=config.ipv6_network if v6 else None, ipv6_subnet=v6))
        agent.metrics.leases_held.labels(agent.name).set(1)

    def before_sync(self):
        self.renew(verify=True)  # recreates a vanished lease, or raises LeaseConflict

    def sync(self, raw):
        agent = self.agent
        self._check_own(raw)
        if agent.conflict is not None:
            agent.log.info("lease conflict resolved", extra=agent.extra())
        agent.conflict = None
        agent.metrics.conflict.labels(agent.name).set(0)
        agent.problem = None

    def on_lease_event(self, kind, key, value, received):
        agent = self.agent
        if key != agent.held.lease.key:
            return
        if kind == "delete":
            agent.log.warning("our lease vanished; recreating it", extra=agent.extra())
            self.renew(verify=True)
        else:
            self._check_own([(key, value, 1)])

    def publish(self, backend_data) -> None:
        """Put new BackendData of this node (e.g. a rotated key) into its lease."""
        agent = self.agent
        agent.held = self.manager.republish(agent.held, backend_data)
        agent.log.info("lease republished with new backend data", extra=agent.extra())
        agent.write_status()

    def timers(self):
        return [(min(self.agent.options.lease_ttl / 3.0, RENEW_EVERY_MAX), self.renew)]

    def _check_own(self, raw):
        """Our key must still name us; another node's name there is a conflict."""
        agent = self.agent
        for key, value, _ in raw:
            if key != agent.held.lease.key:
                continue
            try:
                lease = Lease.from_json(key, value)
            except ConfigError:
                continue
            if lease.node_name != agent.node.name:
                raise LeaseConflict(f"network {agent.name}: subnet {key} of node {agent.node.name} is "
                                    f"now held by {lease.node_name}; keeping the datapath")

    def renew(self, verify=False):
        agent = self.agent
        before = agent.held.lease_id
        agent.held = self.manager.renew(agent.held, agent.options.lease_ttl, verify)
        agent.metrics.renewals.labels(agent.name).inc()
        if agent.held.lease_id != before:
            agent.log.warning("lease recreated after it vanished", extra=agent.extra())
            agent.write_status()

    def status(self):
        held = self.agent.held
        lease = held.lease if held else None
        return {"lease": {"subnet": str(lease.subnet),
                          "ipv6Subnet": str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
                          "publicIP": str(lease.public_ip), "vtepMAC": lease.vtep_mac,
                          "leaseID": held.lease_id} if lease else None}
