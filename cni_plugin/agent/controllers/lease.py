"""The lease controller: this node's subnet lease for one network, the subnet file, and
the network config as it changes.

Acquires (or finds again) the lease, renews it, notices when another node's name
appears on our key (a conflict: the datapath stays) or another agent identity under our
node name (a collision: fatal), and writes the subnet file the plugin reads once the
backend said which MTU pods get.

Config changes arrive from the watch: MTU, IPMasq, SubnetMin/SubnetMax are applied at
once (subnet file rewritten, controllers told through config_changed); a change of
Network, SubnetLen, IPv6 or Backend is refused while running: the agent keeps serving
the config it started with, reports config_problem (status `problem`, /readyz 503) and
no longer recreates its lease, until weftd is restarted under the new config.
"""

import ipaddress
import threading

from ... import paths
from ...subnet import subnet_file, validation
from ...subnet.lease import ConfigError, Lease, NetworkConfig
from ...subnet.lease_manager import LeaseConflict, LeaseManager, NodeCollision, collision_message
from ..runtime import Backoff, Controller
from . import register

RENEW_EVERY_MAX = 3600.0
PUBLISH_RETRY_FIRST = 0.5  # seconds from a failed publish of new backend data to the next try
PUBLISH_RETRY_MAX = 30.0


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
                             public_ipv6=node.public_ipv6, node_id=node.node_id)
            self.manager = LeaseManager(agent.registry, config, template, agent.options.state_dir)
            agent.config = config
        if agent.held is None:
            agent.held = self.manager.acquire(agent.options.lease_ttl)
            agent.conflict = None
            agent.metrics.conflict.labels(agent.name).set(0)
            agent.log.info("lease acquired", extra=agent.extra())

    def after_prepare(self):
        self.write_subnet_file()

    def write_subnet_file(self):
        agent = self.agent
        lease, config = agent.held.lease, agent.config

        def gateway(subnet):  # the node's address in its subnet: the first one (.1, ::1)
            return None if subnet is None else ipaddress.ip_interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")

        v6 = gateway(lease.ipv6_subnet)
        subnet_file.write(paths.subnet_file(agent.options.run_dir, agent.name), subnet_file.SubnetLease(
            network=config.network if lease.subnet is not None else None, subnet=gateway(lease.subnet),
            mtu=config.mtu or agent.mtu, ipmasq=config.ip_masq, ipv4_ipmasq=config.ipv4_masq,
            ipv6_ipmasq=config.ipv6_masq,
            ipv6_network=config.ipv6_network if v6 else None, ipv6_subnet=v6))
        agent.metrics.leases_held.labels(agent.name).set(1)

    def before_sync(self):
        # a config changed while etcd was away (or between prepare and now): judge it
        # before the lease is verified, so a migrated lease is not recreated
        self.on_config_event(self.agent.registry.get_network_config(self.agent.name))
        self.renew(verify=True)  # recreates a vanished lease, or raises LeaseConflict

    def sync(self, raw):
        agent = self.agent
        self._created = {row[0]: row[3] for row in raw}
        self._check_own(raw)
        self._check_namesakes(raw)
        if agent.conflict is not None:
            agent.log.info("lease conflict resolved", extra=agent.extra())
        agent.conflict = None
        agent.metrics.conflict.labels(agent.name).set(0)
        agent.problem = None

    def on_lease_event(self, kind, key, value, received, created=0):
        agent = self.agent
        if key != agent.held.lease.key:
            if kind == "put":
                self._check_namesakes([(key, value, None, created)])  # lease id unknown here
            return
        if kind == "delete":
            # the config and lease watches are separate streams: a migration's delete may
            # arrive before its config change, so read the config before recreating anything
            self.on_config_event(agent.registry.get_network_config(agent.name))
        if kind == "delete" and agent.config_problem:
            agent.log.warning("our lease was deleted while the network config changed; not recreating "
                              "it under the old config: restart weftd to lease under the new one",
                              extra=agent.extra())
        elif kind == "delete":
            agent.log.warning("our lease vanished; recreating it", extra=agent.extra())
            self.renew(verify=True)
        else:
            self._check_own([(key, value, 1)])

    def on_config_event(self, text):
        """Apply a live-safe config change, or refuse one that needs a restart."""
        agent = self.agent
        if text is None:
            self._config_problem(f"the network config {agent.registry.config_key(agent.name)} was "
                                 "deleted; still serving the last one (restore it with weftctl network set)")
            return
        try:
            new = NetworkConfig.parse(agent.name, text)
        except ConfigError as exc:
            self._config_problem(f"the new network config is unusable ({exc}); still serving the last one")
            return
        live, restart = validation.config_change(agent.config, new)
        if restart:
            self._config_problem(f"network config changed in a way a running agent does not apply "
                                 f"({'; '.join(restart)}); still serving the config it started with: "
                                 "restart weftd to migrate")
            return
        if agent.config_problem:
            agent.log.info("network config problem resolved", extra=agent.extra())
            agent.config_problem = None
        if live:
            old = agent.config
            agent.config = self.manager.config = new
            self.write_subnet_file()
            agent.log.info(f"network config change applied live: {'; '.join(live)}", extra=agent.extra())
            for controller in agent.controllers:
                controller.config_changed(old, new)
        agent.write_status()

    def _config_problem(self, message):
        agent = self.agent
        if message != agent.config_problem:
            agent.log.error(message, extra=agent.extra())
        agent.config_problem = message
        agent.metrics.ready.labels(agent.name).set(0)

    def publish(self, backend_data) -> None:
        """Put new BackendData of this node (e.g. a rotated key) into its lease.  A write
        that fails is retried soon (PUBLISH_RETRY_FIRST seconds, doubling to the renew
        interval) and by every renew, until etcd holds it; meanwhile the status file's
        "unpublished" and a warning say so (peers still use the old data)."""
        agent = self.agent
        try:
            agent.held = self.manager.republish(agent.held, backend_data)
        except Exception as exc:
            self._not_published(exc)
            return
        self._published()

    def _not_published(self, exc) -> None:
        agent = self.agent
        self.unpublished = (f"this node's new backend data (e.g. a rotated key) is not in its lease yet, "
                            f"peers still use the old one: {exc}")
        agent.log.warning(f"{self.unpublished}; retrying", extra=agent.extra())
        agent.write_status()
        if self._publish_timer is None:
            if self._publish_backoff is None:
                self._publish_backoff = Backoff(PUBLISH_RETRY_FIRST, min(PUBLISH_RETRY_MAX, self.timers()[0][0]))
            self._publish_timer = threading.Timer(self._publish_backoff.next(), self._publish_due)
            self._publish_timer.daemon = True
            self._publish_timer.start()

    def _publish_due(self) -> None:
        """The timer's thread: the retry runs on the loop (dropped by a loop waiting out
        a failure, whose relist renews, and so publishes, anyway)."""
        self._publish_timer = None
        self.agent.call_soon(self._publish_again)

    def _publish_again(self) -> None:
        if self.agent.held is not None and self.manager.unpublished(self.agent.held):
            self.publish(self.manager.template.backend_data)

    def _published(self) -> None:
        agent = self.agent
        if self._publish_backoff is not None:
            self._publish_backoff.reset()
        if self.unpublished is not None:
            agent.log.info("lease published with this node's current backend data", extra=agent.extra())
        else:
            agent.log.info("lease republished with new backend data", extra=agent.extra())
        self.unpublished = None
        agent.write_status()

    unpublished = None  # why etcd does not hold this node's current backend data yet
    _publish_timer = None
    _publish_backoff = None

    def close(self):
        if self._publish_timer is not None:
            self._publish_timer.cancel()

    def timers(self):
        return [(min(self.agent.options.lease_ttl / 3.0, RENEW_EVERY_MAX), self.renew)]

    def _check_own(self, raw):
        """Our key must still name us; another node's name there is a conflict."""
        agent = self.agent
        for key, value, *_ in raw:
            if key != agent.held.lease.key:
                continue
            try:
                lease = Lease.from_json(key, value)
            except ConfigError:
                continue
            if lease.node_name != agent.node.name:
                raise LeaseConflict(f"network {agent.name}: subnet {key} of node {agent.node.name} is "
                                    f"now held by {lease.node_name}; keeping the datapath")
            self.manager.check_identity(key, lease, agent.held.lease_id)  # rewritten by a namesake

    def _check_namesakes(self, raw):
        """Another lease under our node name with another NodeID: two agents share the
        name.  The newer lease's agent gives up (fatal); the older one logs it."""
        agent = self.agent
        own = agent.held.lease
        for key, value, lease_id, created in raw:
            if key == own.key:
                continue
            try:
                lease = Lease.from_json(key, value)
            except ConfigError:
                continue
            if lease.node_name != own.node_name or self.manager.is_mine(lease):
                continue
            message = collision_message(agent.name, own, key, lease, lease_id)
            ours = self._created.get(own.key, 0)
            if created and ours and created > ours:
                agent.log.error(f"another agent uses this node name (it gives up): {message}",
                                extra=agent.extra())
                continue
            raise NodeCollision(message)

    _created = {}  # key -> create revision, from the last listing

    def renew(self, verify=False):
        agent = self.agent
        if agent.config_problem and agent.held.lease_id:
            # keep the etcd lease alive, but never recreate a deleted key under the old config
            agent.registry.refresh(agent.held.lease_id)
            return
        before = agent.held.lease_id
        pending = self.manager.unpublished(agent.held)
        agent.held = self.manager.renew(agent.held, agent.options.lease_ttl, verify)
        agent.metrics.renewals.labels(agent.name).inc()
        if pending and not self.manager.unpublished(agent.held):
            self._published()
        if agent.held.lease_id != before:
            agent.log.warning("lease recreated after it vanished", extra=agent.extra())
            agent.write_status()

    def status(self):
        held = self.agent.held
        lease = held.lease if held else None
        return {"lease": {"subnet": str(lease.subnet) if lease.subnet else None, "key": lease.key,
                          "ipv6Subnet": str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
                          "publicIP": lease.public_ip and str(lease.public_ip),
               "publicIPv6": lease.public_ipv6 and str(lease.public_ipv6), "vtepMAC": lease.vtep_mac,
                          "leaseID": held.lease_id} if lease else None,
                "unpublished": self.unpublished}
