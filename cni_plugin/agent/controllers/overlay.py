"""The overlay controller: every other node's valid lease programmed in the kernel.

Sets up the backend's device (backends/<type>.py), programs each remote lease from
the watch, and reconciles the kernel against the known leases periodically and while
etcd is away (only against leases actually seen: an empty list would tear down
every peer).

Only leases subnet/validation.py accepts become peers: the whole set of rows is judged
again after every listing and every watch event (oldest wins, so the verdict is the
same on every node), a lease that turns invalid is removed from the kernel, and a lease
overlapping this node's own subnet is never a peer, however old (the node's own pods
must not be routed into the overlay).  Refusals are logged once each, counted in
weft_leases_refused{network,reason} and listed in the status file.

The "rotate-key" command (weftd's SIGHUP) has the backend make a new key, then the
lease controller publishes it; peers re-program from their watch.
"""

import dataclasses
import time

from ... import backends
from ...backends import engine
from ...datapath import sysctl, underlay
from ...datapath.netlink import open_agent
from ...subnet import validation
from ...subnet.registry import LeaseRow
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
        self.rows = {}     # key -> LeaseRow: every lease key of the network, ours included
        self.refused = {}  # key -> validation.Refusal, as last logged
        self.judged, self.judged_config = {}, None  # validation's per-row cache, for one config

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
        self.rows = {row[0]: LeaseRow(*row) for row in raw}
        self.agent.peers = self._judge()
        self.reconcile()

    def on_lease_event(self, kind, key, value, received, created=0):
        agent = self.agent
        if kind == "put":
            self.rows[key] = LeaseRow(key, value, 0, created)
        else:
            self.rows.pop(key, None)
        before, after = agent.peers, self._judge()
        agent.peers = after
        for gone in [k for k in before if k not in after]:
            self._program(engine.remove_peer, before[gone], "peer removed")
        for peer_key, lease in after.items():
            previous = before.get(peer_key)
            if previous != lease:  # the previous version's entries that changed go (e.g. a rotated key)
                self._program(lambda nl, plan, new, previous=previous: engine.apply_peer(nl, plan, new, previous),
                              lease, "peer programmed")
        agent.metrics.program_seconds.labels(agent.name).observe(time.monotonic() - received)
        agent.metrics.peers.labels(agent.name).set(len(agent.peers))
        agent.write_status()

    def _judge(self) -> dict:
        """The peers to program: valid leases of other nodes not overlapping our subnet.
        Logs each new refusal once and publishes the refusal counts."""
        agent = self.agent
        own = agent.held.lease
        if self.judged_config is not agent.config:  # per-row checks depend on the config
            self.judged, self.judged_config = {}, agent.config
        for stale in [k for k in self.judged if self.rows.get(k[0], (None, None))[1] != k[1]]:
            del self.judged[stale]
        verdict = validation.validate(agent.config, self.rows.values(), self.judged)
        refused = dict(verdict.refused)
        peers = {}
        for key, lease in verdict.valid.items():
            if key == own.key:
                continue
            if validation.leases_overlap(lease, own):
                refused[key] = validation.Refusal(
                    key, validation.OVERLAP, f"lease {key} of node {lease.node_name} overlaps this node's "
                    f"own subnet {own.subnet} ({own.ipv6_subnet or 'no IPv6'}); never routed here",
                    lease.node_name)
                continue
            peers[key] = lease
        for key, refusal in refused.items():
            if self.refused.get(key) != refusal:
                agent.log.error(f"lease refused: {refusal.detail}",
                                extra=agent.extra(peer=key, reason=refusal.reason))
                agent.metrics.refused_total.labels(agent.name, refusal.reason).inc()
        for key in self.refused.keys() - refused.keys():
            agent.log.info("lease no longer refused", extra=agent.extra(peer=key))
        self.refused = refused
        self._own_refused(refused.get(own.key))
        for reason in validation.REASONS:
            count = sum(1 for r in refused.values() if r.reason == reason)
            agent.metrics.refused.labels(agent.name, reason).set(count)
        return peers

    def _program(self, step, lease, done: str):
        agent = self.agent
        peer = f"{lease.key} {lease.node_name} {lease.public_ip}"
        try:
            step(self.nl, self.plan, lease)
        except Exception as exc:  # the next reconcile retries; say what failed now
            agent.log.error(f"{done.split()[1]} failed: {exc}", extra=agent.extra(peer=peer))
            return
        agent.log.info(done, extra=agent.extra(peer=peer))

    def _own_refused(self, refusal):
        """Our own lease refused (e.g. an older lease shares its IPv6 subnet): every other
        node refuses it too, so nobody routes to our pods: a conflict (not ready, STATUS 51)."""
        agent = self.agent
        message = None
        if refusal is not None:
            message = (f"network {agent.name}: this node's lease is refused by lease validation, so "
                       f"no other node routes to it: {refusal.detail}")
        if message is not None:
            agent.conflict = message
        elif agent.conflict is not None and agent.conflict == self.own_conflict:
            agent.conflict = None
        self.own_conflict = message

    own_conflict = None

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
                "refused": [r.as_status() for _, r in sorted(self.refused.items())],
                "driftRepaired": self.drift_repaired, "lastReconcile": self.last_reconcile}

    def close(self):
        if self.nl is not None:
            self.nl.close()
