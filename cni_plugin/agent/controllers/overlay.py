"""The overlay controller: every other node's lease programmed in the kernel.

Sets up the backend's device (backends/<type>.py), programs each remote lease from
the watch, and reconciles the kernel against the known leases periodically and while
etcd is away (only against leases actually seen: an empty list would tear down
every peer).  The "rotate-key" command (weftd's SIGHUP) has the backend make a new
key, then the lease controller publishes it; peers re-program from their watch.
"""

import dataclasses
import time

from ... import backends
from ...backends import engine
from ...datapath import sysctl, underlay
from ...datapath.netlink import open_agent
from ...subnet.lease import ConfigError, Lease
from ...subnet.lease_manager import remote_leases
from ..runtime import Controller
from . import register


@register
class OverlayController(Controller):
    name = "overlay"
    order = 20

    def __init__(self, agent):
        super().__init__(agent)
        self.nl = None
        self.backend = None
        self.plan = None
        self.drift_repaired = 0
        self.synced_once = False  # the first full sync programs every peer: not drift
        self.last_reconcile = None

    def prepare(self):
        agent = self.agent
        if self.backend is None:
            self.nl = open_agent()
            self.backend = backends.get(agent.config.backend_type)(agent.config.backend, agent.log)
        lease = agent.held.lease
        local = underlay.interface_of_ip(self.nl, agent.node.public_ip)
        sysctl.enable_forwarding({4, 6} if lease.ipv6_subnet else {4})
        result = self.backend.setup(self.nl, agent.config, lease, agent.node, local)
        if result.action in ("recreated", "updated"):
            agent.log.warning(f"device {result.device.name} {result.action}: {result.reason}",
                              extra=agent.extra())
        self.plan = engine.Plan.for_network(self.backend, agent.config, lease, local, result.device)
        agent.mtu = result.mtu

    def sync(self, raw):
        agent = self.agent
        agent.peers = {lease.key: lease for lease in remote_leases(raw, agent.held.lease.key)}
        self.reconcile()

    def on_lease_event(self, kind, key, value, received):
        agent = self.agent
        if key == agent.held.lease.key:
            return
        if kind == "put":
            try:
                lease = Lease.from_json(key, value)
            except ConfigError as exc:
                agent.log.error("ignoring unreadable lease", extra=agent.extra(peer=key, error=exc))
                return
            previous = agent.peers.get(key)
            agent.peers[key] = lease
            self._program(lambda nl, plan, new: engine.apply_peer(nl, plan, new, previous), lease,
                          "peer programmed")
        else:
            lease = agent.peers.pop(key, None)
            if lease is not None:
                self._program(engine.remove_peer, lease, "peer removed")
        agent.metrics.program_seconds.labels(agent.name).observe(time.monotonic() - received)
        agent.metrics.peers.labels(agent.name).set(len(agent.peers))
        agent.write_status()

    def _program(self, step, lease, done: str):
        agent = self.agent
        peer = f"{lease.key} {lease.node_name} {lease.public_ip}"
        try:
            step(self.nl, self.plan, lease)
        except Exception as exc:  # the next reconcile retries; say what failed now
            agent.log.error(f"{done.split()[1]} failed: {exc}", extra=agent.extra(peer=peer))
            return
        agent.log.info(done, extra=agent.extra(peer=peer))

    def on_command(self, name):
        if name != "rotate-key" or self.backend is None or self.agent.held is None:
            return
        agent = self.agent
        try:
            data = self.backend.rotate_key(self.nl, agent.config, agent.held.lease, agent.node)
        except NotImplementedError as exc:
            agent.log.info(f"key rotation requested: {exc}", extra=agent.extra())
            return
        except Exception as exc:  # the old key stays in use everywhere
            agent.log.error(f"key rotation failed: {exc}", extra=agent.extra())
            return
        try:
            agent.controller("lease").publish(data)
        except Exception as exc:  # the next renew publishes it (the template holds it)
            agent.log.error(f"rotated key not published yet: {exc}", extra=agent.extra())
        self.plan = dataclasses.replace(self.plan, local=agent.held.lease)
        agent.log.info("node key rotated", extra=agent.extra())
        agent.write_status()

    def timers(self):
        return [(self.agent.options.reconcile_interval, self.reconcile)]

    def while_waiting(self):
        if self.backend is not None and self.agent.held is not None and self.synced_once:
            self.reconcile()

    def reconcile(self):
        agent = self.agent
        started = time.monotonic()
        try:
            if self._device_gone():  # e.g. wireguard-go was killed: build the device again
                agent.log.warning(f"device {self.plan.device.name} is gone; setting it up again",
                                  extra=agent.extra())
                self.prepare()
            drift = engine.reconcile(self.nl, dataclasses.replace(self.plan, peers=tuple(agent.peers.values())))
        except Exception as exc:  # OverlayError carries what was done before the failures
            agent.log.error(f"reconcile incomplete: {exc}", extra=agent.extra())
            drift = getattr(exc, "drift", None)
            if drift is None:
                return
        agent.metrics.reconcile_seconds.labels(agent.name).observe(time.monotonic() - started)
        repaired = drift.added + drift.removed
        if repaired and not self.synced_once:
            agent.log.info(f"programmed {repaired} kernel entries for {len(agent.peers)} peers",
                           extra=agent.extra())
        elif repaired:
            self.drift_repaired += repaired
            agent.metrics.drift.labels(agent.name).inc(repaired)
            agent.log.warning(f"reconcile repaired {repaired} kernel entries: {'; '.join(drift.details)}",
                              extra=agent.extra())
        self.synced_once = True
        self.last_reconcile = time.time()
        agent.metrics.peers.labels(agent.name).set(len(agent.peers))
        agent.metrics.ready.labels(agent.name).set(1 if agent.ready else 0)
        agent.write_status()

    def _device_gone(self) -> bool:
        device = self.plan.device
        if not device.index:
            return False
        link = self.nl.link(index=device.index)
        return link is None or link.name != device.name

    def status(self):
        agent = self.agent
        extra = self.backend.status() if self.backend is not None else {}
        return {**extra, "backend": agent.config.backend_type if agent.config else None,
                "peers": sorted(f"{p.key} {p.node_name} {p.public_ip}" for p in agent.peers.values()),
                "driftRepaired": self.drift_repaired, "lastReconcile": self.last_reconcile}

    def close(self):
        if self.nl is not None:
            self.nl.close()
