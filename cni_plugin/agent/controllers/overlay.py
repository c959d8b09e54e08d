"""The overlay controller: every other node's valid lease programmed in the kernel.

Sets up the backend's device (backends/<type>.py), programs each remote lease from
the watch, and reconciles the kernel against the known leases periodically and while
etcd is away (only against leases actually seen: an empty list would tear down
every peer).

Only leases subnet/validation.py accepts become peers: the whole set of rows is judged
after every listing and kept judged on every watch event (subnet/live_verdict.py: the
same verdict, O(1) per event; oldest wins, so the verdict is the same on every node),
a lease that turns invalid is removed from the kernel, and a lease
overlapping this node's own subnet is never a peer, however old (the node's own pods
must not be routed into the overlay).  Refusals are logged once each, counted in
weft_leases_refused{network,reason} and listed in the status file.

The "rotate-key" command (weftd's SIGHUP) has the backend make a new key, then the
lease controller publishes it (retrying a failed write until etcd holds it); peers
re-program from their watch.

A write or read that failed is retried by a full pass soon, not at the next periodic
one: RETRY_FIRST seconds, doubling to the reconcile interval while it keeps failing.
A fresh WireGuard cluster must connect within seconds, and one reconcile interval (10 s
by default) plus wireguard-go's handshake retry (5 s) is longer than that.
"""

import bisect
import dataclasses
import threading
import time

from ... import backends
from ...backends import engine
from ...datapath import sysctl, underlay
from ...datapath.errors import DatapathError
from ...datapath.changes import KernelChanges
from ...datapath.netlink import open_agent
from ...datapath.owned_dump import open_reader
from ..background_read import BackgroundRead
from ..read_schedule import for_controller
from ...subnet import validation
from ...subnet.live_verdict import LiveVerdict
from ..runtime import Backoff, Controller
from . import register

RETRY_FIRST = 0.5  # seconds from a failed write or read to the full pass that retries it


@register
class OverlayController(Controller):
    name = "overlay"
    order = 20

    def __init__(self, agent):
        super().__init__(agent)
        self.nl = None     # pyroute2 (netlink.py): the device and every write
        self.dump = None   # owned_dump.py: the loop's own reads of weft's entries (filtered dumps)
        self.reader = None  # BackgroundRead: the periodic reconcile's dumps, off the loop
        self.schedule = None  # ReadSchedule: what the next periodic pass reads (agent/read_schedule.py)
        self.backend = None
        self.plan = None
        self.drift_repaired = 0
        self.synced_once = False  # the first full sync programs every peer: not drift
        self.last_reconcile = None
        self.live = None   # LiveVerdict over every lease key of the network, ours included
        self.own_overlaps = {}  # key -> Refusal: valid leases overlapping our own subnet, or
        # sharing no underlay family with this node
        self.gaps = {}  # key -> what the backend cannot carry to that peer (backends/base.py peer_gaps)
        self.refused = {}  # key -> validation.Refusal, as last logged
        self._published = False
        # the status file's "peers": one line per peer, kept sorted and changed one event
        # at a time (rebuilding it for every write cost ~15 ms at 5,000 peers, on the loop)
        self._lines = {}          # key -> line
        self._sorted_lines = []
        self._lines_for = None    # the agent.peers dict the lines describe
        self._retry = None        # threading.Timer of the pass that retries a failure
        self._retry_backoff = None

    def prepare(self):
        agent = self.agent
        if self.backend is None:
            self.nl = open_agent()
            self.dump = open_reader()
            self.reader = BackgroundRead(agent.name, open_reader, engine.read_state, agent.call_soon, agent.log)
            self.backend = backends.get(agent.config.backend_type)(agent.config.backend, agent.log)
        self.reader.reset()
        lease, node = agent.held.lease, agent.node
        local4 = underlay.interface_of_ip(self.nl, node.public_ip) if node.public_ip else None
        local6 = underlay.interface_of_ip(self.nl, node.public_ipv6) if node.public_ipv6 else None
        sysctl.enable_forwarding({s.version for s in lease.subnets})
        if local6 is not None and sysctl.keep_accepting_ra(local6.name):
            agent.log.warning(f"net.ipv6.conf.{local6.name}.accept_ra set from 1 to 2: with IPv6 forwarding on, "
                              "router advertisements (this underlay's default route, perhaps its address) "
                              "are otherwise ignored", extra=agent.extra())
        result = self.backend.setup(self.nl, agent.config, lease, node, local4, local6)
        if result.action in ("recreated", "updated"):
            agent.log.warning(f"device {result.device.name or result.device6.name} {result.action}: "
                              f"{result.reason}", extra=agent.extra())
        self.plan = engine.Plan.for_network(self.backend, agent.config, lease, local4, result.device,
                                            underlay6=local6, device6=result.device6)
        self._watch_kernel(tuple(d.index for d in self.plan.devices))
        agent.mtu = result.mtu

    def sync(self, raw):
        self.reader.reset()
        self.live = LiveVerdict(self.agent.config, raw)
        self.agent.peers = self._judge_all()
        self.reconcile()

    def config_changed(self, old, new):
        if self.live is not None:
            self.live.reset(new, self.live.rows.values())

    def on_lease_event(self, kind, key, value, received, created=0):
        agent = self.agent
        changed = self.live.apply(kind, key, value, created)
        before = agent.peers
        if changed is None:  # re-judged as a whole (an overlap): compare everything
            after = self._judge_all()
            changed = set(before) | set(after)
        else:
            after = dict(before)
            for changed_key in changed:
                lease = self._peer(changed_key)
                if lease is None:
                    after.pop(changed_key, None)
                else:
                    after[changed_key] = lease
            self._publish_refusals()
        agent.peers = after
        self._relist_lines(changed, before, after)
        for gone in [k for k in changed if k in before and k not in after]:
            self.reader.touched(gone)
            self._program(engine.remove_peer, before[gone], "peer removed")
        for peer_key in [k for k in changed if k in after and before.get(k) != after[k]]:
            self.reader.touched(peer_key)
            previous = before.get(peer_key)  # its entries that changed go (e.g. a rotated key)
            self._program(lambda nl, plan, new, previous=previous: engine.apply_peer(nl, plan, new, previous),
                          after[peer_key], "peer programmed")
        agent.metrics.program_seconds.labels(agent.name).observe(time.monotonic() - received)
        agent.metrics.peers.labels(agent.name).set(len(agent.peers))
        agent.status_changed()

    def _peer(self, key):
        """The Lease to program for `key`, or None (not valid, ours, overlapping ours, or
        sharing no underlay family with this node)."""
        own = self.agent.held.lease
        self.own_overlaps.pop(key, None)
        self.gaps.pop(key, None)
        lease = self.live.valid.get(key)
        if lease is None or key == own.key:
            return None
        try:
            engine.underlay_route(self._families(), lease)
        except engine.NoCommonUnderlay as exc:
            self.own_overlaps[key] = validation.Refusal(
                key, validation.NO_COMMON_UNDERLAY, f"lease {key} of node {lease.node_name}: {exc}", lease.node_name)
            return None
        if validation.leases_overlap(lease, own):
            self.own_overlaps[key] = validation.Refusal(
                key, validation.OVERLAP, f"lease {key} of node {lease.node_name} overlaps this node's "
                f"own subnets {', '.join(map(str, own.subnets))}; never routed here",
                lease.node_name)
            return None
        gaps = self.backend.peer_gaps(self.plan, lease) if self.plan is not None else []
        if gaps:
            self.gaps[key] = f"lease {key} of node {lease.node_name}: " + "; ".join(gaps)
        return lease

    def _families(self) -> frozenset:
        node = self.agent.node
        return frozenset(v for v, a in ((4, node.public_ip), (6, node.public_ipv6)) if a is not None)

    def _judge_all(self) -> dict:
        """The peers to program: valid leases of other nodes not overlapping our subnet."""
        self.own_overlaps, self.gaps = {}, {}
        peers = {}
        for key in list(self.live.valid):
            lease = self._peer(key)
            if lease is not None:
                peers[key] = lease
        self._publish_refusals()
        return peers

    def _publish_refusals(self) -> None:
        """Log each new refusal once and publish the refusal counts."""
        agent = self.agent
        refused = dict(self.live.refused)
        refused.update(self.own_overlaps)
        if refused == self.refused and self._published and self.gaps == self._logged_gaps:
            return
        self._published = True
        for key, gap in self.gaps.items():
            if self._logged_gaps.get(key) != gap:
                agent.log.warning(f"peer partly routed: {gap}", extra=agent.extra(peer=key))
        self._logged_gaps = dict(self.gaps)
        for key, refusal in refused.items():
            if self.refused.get(key) != refusal:
                agent.log.error(f"lease refused: {refusal.detail}",
                                extra=agent.extra(peer=key, reason=refusal.reason))
                agent.metrics.refused_total.labels(agent.name, refusal.reason).inc()
        for key in self.refused.keys() - refused.keys():
            agent.log.info("lease no longer refused", extra=agent.extra(peer=key))
        self.refused = refused
        self._own_refused(refused.get(agent.held.lease.key))
        for reason in validation.REASONS:
            count = sum(1 for r in refused.values() if r.reason == reason)
            agent.metrics.refused.labels(agent.name, reason).set(count)

    def _program(self, step, lease, done: str):
        agent = self.agent
        peer = self._line(lease)
        try:
            step(self.nl, self.plan, lease)
        except Exception as exc:  # a full pass retries soon; say what failed now
            agent.log.error(f"{done.split()[1]} failed: {exc}", extra=agent.extra(peer=peer))
            self.schedule.again()  # a failed write may change nothing: the next pass reads
            self._retry_soon()
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
    _logged_gaps = {}

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
        agent.controller("lease").publish(data)  # a failed write is retried until it lands
        self.plan = dataclasses.replace(self.plan, local=agent.held.lease)
        agent.log.info("node key rotated", extra=agent.extra())
        agent.write_status()

    def timers(self):
        return [(self.agent.options.reconcile_interval, self.reconcile_in_background)]

    def _watch_kernel(self, device_indexes: tuple):
        """Follow kernel changes from now on (before the listing's full reconcile): the
        devices' links, neighbours and FDB entries and weft's routes (datapath/changes.py);
        the backend's entries without notifications are read on every pass."""
        def follow():
            return KernelChanges(device_indexes)

        if self.schedule is None:
            self.schedule = for_controller(self, follow)
        else:
            self.schedule.follow_anew(follow)
        self.schedule.unnotified = bool(self.plan.unnotified_kinds())

    def reconcile_in_background(self):
        """The periodic pass (agent/read_schedule.py decides what it reads): everything
        weft owns when a notification, the resync interval or a failure says so; else
        the backend's entries that have no notifications (e.g. WireGuard peers); else
        nothing (the kernel still matches the peers).  The read runs on the reader's
        thread, then _reconciled on the loop."""
        read = self.schedule.next()
        if read is None:
            self.last_reconcile = time.time()
            self.agent.status_changed()
            return
        kinds = None if read.full else self.plan.unnotified_kinds()
        self._read_started = time.monotonic()
        if not self.reader.start(self.plan, lambda *result: self._reconciled(read, kinds, *result), kinds):
            self.agent.log.warning("reconcile skipped: the previous kernel read has not finished",
                                   extra=self.agent.extra())

    def _reconciled(self, read, kinds, plan, actual, unsettled, error):
        if plan is not self.plan:
            return  # the device was set up again meanwhile: the next pass reads afresh
        if error is not None and self._device_gone_quietly():  # e.g. wireguard-go died
            self.reconcile(why="device rebuilt")  # sets the device up again, then reads it here
            return
        if error is not None:
            self.agent.log.error(f"reconcile incomplete: cannot read the kernel: {error}",
                                 extra=self.agent.extra())
            self.schedule.again()
            self._retry_soon()
            return
        self.reconcile(actual, unsettled, self._read_started, kinds, read)

    def _retry_soon(self) -> None:
        """A full pass in a moment (see the module doc); one at a time."""
        if self._retry is not None:
            return
        if self._retry_backoff is None:
            self._retry_backoff = Backoff(RETRY_FIRST, max(RETRY_FIRST, self.agent.options.reconcile_interval))
        self._retry = threading.Timer(self._retry_backoff.next(), self._retry_due)
        self._retry.daemon = True
        self._retry.start()

    def _retry_due(self) -> None:
        """The timer's thread: hand the pass to the loop (a loop waiting out a failure
        drops it, and relists and reads everything afterwards anyway)."""
        self._retry = None
        self.agent.call_soon(self._retry_pass)

    def _retry_pass(self) -> None:
        if self.schedule is None or self.plan is None:
            return
        if self.reader.pending is not None:  # a read is under way: its result is compared first
            self._retry_soon()
            return
        self.reconcile_in_background()

    def while_waiting(self):
        if self.backend is not None and self.agent.held is not None and self.synced_once:
            self.reconcile(why="etcd away")

    def reconcile(self, actual=None, unsettled=frozenset(), started=None, kinds=None, read=None, why="listing"):
        """Make the kernel match the peers; actual: a read taken off the loop as `read`
        decided (of `kinds` only, None: everything), else a full read now (`why`)."""
        agent = self.agent
        started = time.monotonic() if started is None else started
        plan = dataclasses.replace(self.plan, peers=tuple(agent.peers.values()))
        failed = False
        try:
            if self._device_gone():  # e.g. wireguard-go was killed: build the device again
                agent.log.warning(f"device {' or '.join(d.name for d in self.plan.devices)} is gone; "
                                  "setting it up again",
                                  extra=agent.extra())
                self.prepare()
                plan = dataclasses.replace(self.plan, peers=tuple(agent.peers.values()))
                actual, why = None, "device rebuilt"  # a read of the old device says nothing of the new one
            if actual is None:
                read, kinds = self.schedule.taken(why), None
                actual = engine.read_state(self.dump, plan)
            drift = engine.reconcile_from(self.nl, plan, actual, unsettled, kinds, self._desired(plan))
        except Exception as exc:  # OverlayError carries what was done before the failures
            agent.log.error(f"reconcile incomplete: {exc}", extra=agent.extra())
            drift, failed = getattr(exc, "drift", None), True
        if read is not None and read.full and (drift is not None or not failed):
            self.schedule.full_read_done(read)  # compared: the resync clock starts again
        if failed:
            self.schedule.again()
            self._retry_soon()
            if drift is None:
                return
        elif self._retry_backoff is not None:
            self._retry_backoff.reset()
        agent.metrics.reconcile_seconds.labels(agent.name).observe(time.monotonic() - started)
        repaired = drift.added + drift.removed
        if repaired and not self.synced_once:
            agent.log.info(f"programmed {repaired} kernel entries for {len(agent.peers)} peers",
                           extra=agent.extra())
        elif repaired:
            self.drift_repaired += repaired
            agent.metrics.drift.labels(agent.name).inc(repaired)
            agent.log.warning(f"reconcile repaired {repaired} kernel entries ({read.scope} read: {read.why}): "
                              f"{'; '.join(drift.details)}",
                              extra=agent.extra())
        self.synced_once = True
        self.last_reconcile = time.time()
        agent.metrics.peers.labels(agent.name).set(len(agent.peers))
        agent.metrics.ready.labels(agent.name).set(1 if agent.ready else 0)
        agent.write_status()

    def _desired(self, plan):
        """engine.desired_state(plan), kept while the peers and the plan stay the same:
        a quiet WireGuard pass compares its peer read with it every interval, and
        planning N leases again each time would cost more than the read."""
        key = (self.agent.peers, self.plan)
        if self._desired_key is None or any(a is not b for a, b in zip(key, self._desired_key)):
            self._desired_key, self._desired_value = key, engine.desired_state(plan)
        return self._desired_value

    _desired_key = _desired_value = None

    def _device_gone_quietly(self) -> bool:
        """_device_gone, False when netlink cannot tell (the read error is reported then)."""
        try:
            return self._device_gone()
        except DatapathError:
            return False

    def _device_gone(self) -> bool:
        for device in self.plan.devices:
            link = self.nl.link(index=device.index)
            if link is None or link.name != device.name:
                return True
        return False

    @staticmethod
    def _line(lease) -> str:
        return f"{lease.key} {lease.node_name} {lease.underlay_text}"

    def _relist_lines(self, changed, before, after) -> None:
        """Bring the status lines from `before` to `after` for the changed keys only."""
        if self._lines_for is not before:
            self._lines_for = None  # not in step: status() rebuilds them
            return
        for key in changed:
            old = self._lines.pop(key, None)
            if old is not None:
                del self._sorted_lines[bisect.bisect_left(self._sorted_lines, old)]
            lease = after.get(key)
            if lease is not None:
                line = self._lines[key] = self._line(lease)
                bisect.insort(self._sorted_lines, line)
        self._lines_for = after

    def _peer_lines(self) -> list:
        peers = self.agent.peers
        if self._lines_for is not peers:
            self._lines = {key: self._line(lease) for key, lease in peers.items()}
            self._sorted_lines = sorted(self._lines.values())
            self._lines_for = peers
        return list(self._sorted_lines)

    def status(self):
        agent = self.agent
        extra = self.backend.status() if self.backend is not None else {}
        return {**extra, "backend": agent.config.backend_type if agent.config else None,
                "peers": self._peer_lines(),
                "refused": [r.as_status() for _, r in sorted(self.refused.items())],
                "partlyRouted": [gap for _, gap in sorted(self.gaps.items())],
                "driftRepaired": self.drift_repaired, "lastReconcile": self.last_reconcile,
                "kernelReads": self.schedule.status() if self.schedule is not None else None}

    def close(self):
        if self._retry is not None:
            self._retry.cancel()
        if self.schedule is not None:
            self.schedule.close()
        if self.reader is not None:
            self.reader.close()
        if self.dump is not None:
            self.dump.close()
        if self.nl is not None:
            self.nl.close()
