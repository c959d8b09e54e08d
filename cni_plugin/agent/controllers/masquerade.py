"""The masquerade controller: the network's node-wide nftables table (datapath/masq.py).

With the network config's IPMasq (default true, as flannel) the table masquerades
traffic from this node's pod subnet(s) to anything outside the cluster network(s).
It is created once the lease is held, compared with the kernel at every reconcile
interval and while etcd is away (a deleted table, set or rule comes back and is
counted as drift; a pass lists the table when nftables' change notifications say
something touched it, when the wanted table changed, and at least every
--resync-interval whatever was notified: agent/read_schedule.py), and removed when the
network goes: its config vanished from etcd, or IPMasq turned false.  The plugin does
no nftables work per pod while an agent serves the network.  SIGTERM leaves the table
in place, like the rest of the datapath.  A per-pod table left by an older weft is
replaced on the first pass.
"""

import time

from ...datapath import masq
from ...datapath.changes import TableChanges
from ...datapath.errors import DatapathError
from ...subnet.lease import ConfigError, NetworkConfig
from ...subnet.registry import RegistryError
from ..read_schedule import for_controller
from ..runtime import Controller
from . import register


@register
class MasqueradeController(Controller):
    name = "masquerade"
    order = 25

    def __init__(self, agent):
        super().__init__(agent)
        self.drift_repaired = 0
        self.state = None  # "installed", "absent" (IPMasq false / network gone), "failed: ..."
        self.last_check = None
        # the network config as the agent's listing and config watch last delivered it
        # (None: deleted); _gone reads it instead of asking etcd every interval
        self.watched = False
        self.watched_text = None
        self.schedule = None       # when a pass lists the table (agent/read_schedule.py)
        self.ensured = None        # the spec the kernel table last matched

    def on_config_event(self, text):
        self.watched, self.watched_text = True, text

    def _spec(self):
        agent = self.agent
        lease, config = agent.held.lease, agent.config
        sources = tuple(s for s in lease.subnets if config.masquerades(s.version))  # IPv6Masq false: routed
        return masq.Masquerade(agent.name, sources, config.networks)

    def prepare(self):
        pass  # the lease controller's prepare gives us the lease; install in after_prepare

    def after_prepare(self):
        self.reconcile(first=True)

    def _follow(self):
        """Follow the table before its first listing: a change after it is never missed."""
        if self.schedule is None:
            table = masq.table_name(self.agent.name)
            self.schedule = for_controller(self, lambda: TableChanges(masq.FAMILY, table))
        return self.schedule

    def timers(self):
        return [(self.agent.options.reconcile_interval, self.reconcile)]

    def while_waiting(self):
        # the loop waits because etcd or the config failed: repair against what is known
        if self.agent.held is not None and self.agent.config is not None:
            self.reconcile(ask_etcd=False)

    def _gone(self, ask_etcd: bool):
        """"deleted" when the config left etcd, "off" when it says IPMasq false, else None
        (an etcd outage or an unreadable config changes nothing)."""
        agent = self.agent
        families = {s.version for s in agent.held.lease.subnets}

        def off(config):  # no family of this node's subnets is masqueraded
            return None if any(config.masquerades(v) for v in families) else "off"

        if not ask_etcd:
            return off(agent.config)
        if self.watched:
            text = self.watched_text
        else:
            try:
                text = agent.registry.get_network_config(agent.name)
            except RegistryError:
                return off(agent.config)
        if text is None:
            return "deleted"
        try:
            return off(NetworkConfig.parse(agent.name, text))
        except ConfigError:
            return off(agent.config)

    def reconcile(self, first=False, ask_etcd=True):
        agent = self.agent
        self.last_check = time.time()
        before = self.state
        read = self._follow().next()  # drained on every pass
        try:
            gone = self._gone(ask_etcd and not first)
            if gone is not None:
                self.ensured = None
                # IPMasq false: a table this agent installed goes, one a netconf's explicit
                # ipMasq true made (standalone ensure) is left to its owner
                if (gone == "deleted" or before == "installed") and masq.remove(agent.name):
                    reason = "the network config left etcd" if gone == "deleted" else "IPMasq is false now"
                    agent.log.info(f"masquerade table {masq.table_name(agent.name)} removed: {reason}",
                                   extra=agent.extra())
                self.state = "absent"
                return
            spec = self._spec()
            if read is None and before == "installed" and spec == self.ensured:
                return  # nothing touched the table since it matched this spec
            read = read if read is not None and read.full else self.schedule.taken("wanted table changed")
            self.ensured = None
            outcome = masq.ensure(spec)
            self.ensured = spec
            self.schedule.full_read_done(read)
        except DatapathError as exc:
            self.schedule.again()
            self.state = f"failed: {exc}"
            agent.log.error(f"masquerade table not in place: {exc}", extra=agent.extra())
            return
        self.state = "installed"
        table = masq.table_name(agent.name)
        if outcome.action == "created" and (first or before in (None, "absent")):
            agent.log.info(f"masquerade table {table} created", extra=agent.extra())
        elif outcome.action == "migrated":
            agent.log.warning(f"masquerade table {table}: replaced the per-pod table of an older weft "
                              "with the node-wide one", extra=agent.extra())
        elif outcome.changed and first:
            agent.log.info(f"masquerade table {table} updated: {'; '.join(outcome.details)}",
                           extra=agent.extra())
        elif outcome.changed:
            self.drift_repaired += 1
            agent.metrics.drift.labels(agent.name).inc()
            agent.log.warning(f"reconcile repaired masquerade table {table}: {'; '.join(outcome.details)}",
                              extra=agent.extra())
            agent.write_status()

    def close(self):
        if self.schedule is not None:
            self.schedule.close()

    def status(self):
        return {"masquerade": {"table": f"{masq.FAMILY} {masq.table_name(self.agent.name)}",
                               "state": self.state, "driftRepaired": self.drift_repaired,
                               "lastCheck": self.last_check,
                               "kernelReads": self.schedule.status() if self.schedule is not None else None}}
