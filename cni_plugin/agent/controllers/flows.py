"""The flow controller: one record per connection per node, while FlowLog is on.

Sources (docs/flows.md): allowed connections from the kernel's connection tracking
(datapath/conntrack.py: NEW and DESTROY events, best effort, ENOBUFS counted; a dump
every --flow-log-interval for the interim records of long-lived connections); denied
attempts from the policy table's denied-flow sets (the policy controller hands them
over, denied()); the deciding policy from the connection's ct mark (flows/marks.py).
Only connections with an address of this network's pod network at either end are
recorded: the overlay's outer packets (VXLAN, WireGuard) carry node addresses.

Two threads of their own, never the network loop's: a receiver that only decodes and
queues (a bounded queue: when the writer falls behind, records are dropped and counted
as "queue", the kernel is never slowed), and a writer that names both ends through the
allocation history (flows/attribution.py, at the connection's start), writes the
journal (flows/journal.py) and exports IPFIX.  Every drop is counted in
weft_flows_dropped_total{network,reason}.
"""

import json
import os
import queue
import threading
import time
from datetime import datetime, timezone

from ...datapath import conntrack, sysctl
from ...datapath.errors import DatapathError
from ...flows import attribution as flow_attribution
from ...flows import journal as flow_journal
from ...flows import record as flow_record
from ...ipam import history as ipam_history
from ...subnet.registry import RegistryError
from ...timestamps import now
from ..runtime import Controller
from . import register

QUEUE_SIZE = 65536
HISTORY_REFRESH = 30.0    # seconds between readings of the cluster's allocation history
UNKNOWN_REFRESH = 1.0     # at most this often when an address of the pod network is unknown
NAMESPACE_PAIRS = 200     # label pairs of weft_flow_bytes_total before "other"
STATUS_EVERY = 1.0        # seconds: at most this often a drop rewrites the status file
_STOP = ("stop",)


@register
class FlowController(Controller):
    name = "flows"
    order = 45

    def __init__(self, agent):
        super().__init__(agent)
        self.settings = None     # the FlowLog being served (flows.config.FlowLog)
        self.collector = None
        self.problem = None

    @property
    def logging(self) -> bool:
        return self.collector is not None

    def after_prepare(self):
        self._follow(self.agent.config)

    def config_changed(self, old, new):
        self._follow(new)

    def _follow(self, config):
        wanted = config.flow_log if config is not None else None
        if wanted == self.settings and (wanted is None) == (self.collector is None):
            return
        self._stop_collector()
        self.settings = wanted
        if wanted is None:
            self._set_problem(None)
            return
        self._start()

    def _start(self):
        """Turn on what the kernel must give and start the collector; what fails is a
        config problem of FlowLog (NetworkAgent.report_setting), retried every
        reconcile interval until it holds or FlowLog is off."""
        agent, problems = self.agent, []
        try:
            sysctl.enable_bridge_netfilter()
        except DatapathError as exc:
            problems.append(f"FlowLog is on but same-node (bridged) connections are not seen: {exc}")
        try:
            conntrack.enable_accounting()
        except DatapathError as exc:
            problems.append(f"FlowLog: counters and times unavailable: {exc}")
        if self.collector is None:
            networks = [n for n in (agent.config.network, agent.config.ipv6_network) if n is not None]
            try:
                self.collector = FlowCollector(agent, networks, self.settings)
                agent.log.info(f"flow records on ({self.settings}) into {self.collector.journal.path}",
                               extra=agent.extra())
            except DatapathError as exc:
                problems.append(f"FlowLog not served: {exc}")
        self._set_problem("; ".join(problems) or None)

    def _set_problem(self, problem):
        self.problem = problem
        self.agent.report_setting("FlowLog", problem)

    def timers(self):
        return [(self.agent.options.reconcile_interval, self._retry)]

    def _retry(self):
        if self.settings is not None and self.problem is not None:
            self._start()

    def denied(self, direction, flow, policies, seen):
        collector = self.collector
        if collector is not None:
            collector.offer(("denied", direction, flow, policies, seen))

    def _stop_collector(self):
        collector, self.collector = self.collector, None
        if collector is not None:
            collector.close()

    def close(self):
        self._stop_collector()

    def status(self):
        if self.settings is None:
            return {"flows": None}
        collector = self.collector
        out = {"setting": str(self.settings), "problem": self.problem}
        if collector is not None:
            out.update(collector.status())
        return {"flows": out}


class FlowCollector:
    """The two threads of one network's flow records."""

    def __init__(self, agent, networks, settings):
        self.agent, self.networks, self.settings = agent, networks, settings
        options = agent.options
        self.node, self.network = agent.node.name, agent.name
        self.interval = options.flow_log_interval
        self.queue = queue.Queue(QUEUE_SIZE)
        self.stopping = threading.Event()
        self.dropped = {}
        self.written = 0
        self.lost_reported = 0
        # shared by the two threads (single dict/set operations only):
        self.live = {}        # ct id -> [first seen (epoch seconds), last record written (monotonic)]
        self.done = {}        # ct id -> monotonic time its final record was written at its close
        self.closing = set()  # ct ids whose close was queued and not yet read back
        self.skip = set()     # ct ids of connections closed that are not this network's
        self.pairs = set()
        self.status_written = 0.0
        self.attribution = flow_attribution.Attribution()
        self.history_offset = 0
        self.history_refreshed = 0.0
        self.history_path = os.path.join(options.ipam_data_dir, agent.name, ipam_history.HISTORY_FILE)
        self.journal = flow_journal.FlowJournal(options.flow_log_dir, agent.name, options.flow_log_max_bytes,
                                                options.flow_log_max_age, options.flow_log_files,
                                                on_drop=self._dropped)
        self.exporter = None
        if settings.ipfix:
            from ...flows.ipfix import Exporter

            self.exporter = Exporter(settings.ipfix, options.flow_log_template_interval)
        self.events = conntrack.ConntrackEvents()
        self.receiver = threading.Thread(target=self._receive, name=f"weftd-flows-rx-{agent.name}", daemon=True)
        self.writer = threading.Thread(target=self._write, name=f"weftd-flows-{agent.name}", daemon=True)
        self.receiver.start()
        self.writer.start()

    # -- counting ------------------------------------------------------------------
    def _dropped(self, reason, count):
        self.dropped[reason] = self.dropped.get(reason, 0) + count
        self.agent.metrics.flows_dropped.labels(self.network, reason).inc(count)
        self._status_soon()

    def _status_soon(self):
        if time.monotonic() - self.status_written > STATUS_EVERY:  # the status file says so soon
            self.status_written = time.monotonic()
            self.agent.call_soon(self.agent.write_status)

    def offer(self, item) -> None:
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self._dropped("queue", 1)

    def status(self) -> dict:
        return {"journal": self.journal.path, "written": self.written, "dropped": dict(self.dropped),
                "eventsLost": self.events.lost, "live": len(self.live), "journalError": self.journal.last_error,
                "ipfix": self.exporter.status() if self.exporter else None}

    # -- receiver ------------------------------------------------------------------------
    def _ours(self, entry) -> bool:
        src, dst = entry.orig.src, entry.orig.dst
        return any(src in n or dst in n for n in self.networks if n.version == src.version)

    def _wanted(self, event, ct_id, state) -> bool:
        """Whether an event is decoded and queued (the receiver's thread, per message:
        only dictionary lookups here).  NEW is remembered by id alone (first seen, for
        interim records); a TCP close is decoded once; a DESTROY of a connection whose
        record was written at its close (or that is not ours) is skipped."""
        if event == "new":
            self.live[ct_id] = [time.time(), time.monotonic()]
            return False
        if event == "update":
            if ct_id in self.done or ct_id in self.closing or ct_id in self.skip:
                return False
            self.closing.add(ct_id)
            return True
        self.closing.discard(ct_id)
        if self.done.pop(ct_id, None) is not None or ct_id in self.skip:
            self.skip.discard(ct_id)
            self.live.pop(ct_id, None)
            return False
        return True

    def _receive(self):
        while not self.stopping.is_set():
            try:
                entries = self.events.receive(0.5, self._wanted)
            except DatapathError as exc:
                self.agent.log.error(f"conntrack events not read: {exc}", extra=self.agent.extra())
                self.stopping.wait(1.0)
                continue
            lost = self.events.lost
            if lost != self.lost_reported:
                self.agent.metrics.flow_events_lost.labels(self.network).inc(lost - self.lost_reported)
                self.lost_reported = lost
                self._status_soon()
            for entry in entries:
                if conntrack.ended(entry):  # raw: whose it is shows once its counters are read
                    self.offer(("close", entry))
                elif self._ours(entry):
                    self.offer(("ct", entry))
                else:
                    self.live.pop(entry.id, None)

    # -- writer ----------------------------------------------------------------------------
    def _write(self):
        next_interim = time.monotonic() + self.interval
        while True:
            timeout = max(0.0, next_interim - time.monotonic())
            try:
                batch = [self.queue.get(timeout=timeout)]
            except queue.Empty:
                batch = []
            while len(batch) < 4096:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if any(item is _STOP for item in batch):
                return
            try:
                records = self._records(batch)
                if time.monotonic() >= next_interim:
                    records += self._interim()
                    next_interim = time.monotonic() + self.interval
                self._emit(records)
            except Exception as exc:  # a bug: report, keep serving the next batch
                self.agent.log.exception("flow records failed", extra=self.agent.extra(error=repr(exc)))
                self._dropped("internal-error", len(batch))
            if self.exporter is not None:
                self.exporter.tick()

    def _records(self, batch) -> list:
        self._refresh_history()
        moment = now()
        out, ended = [], []
        for item in batch:
            if item[0] == "denied":
                _, direction, flow, policies, seen = item
                self._resolve(flow[:2])
                out.append(flow_record.denied(direction, flow, policies, node=self.node, network=self.network,
                                              seen=seen, attribution=self.attribution))
                continue
            entry = item[1]
            if item[0] == "close":  # a TCP connection closed: its record is written now
                ended.append(entry)
            elif self.done.pop(entry.id, None) is None:  # destroy, not written at its close
                out.append(self._final(entry, moment))
        if ended:
            try:
                current = conntrack.get(ended)
            except DatapathError as exc:  # their DESTROY events will bring them
                self.agent.log.warning(f"closed connections not read: {exc}", extra=self.agent.extra())
                current = []
            for entry in current:
                if self._ours(entry):
                    self.done[entry.id] = time.monotonic()
                    out.append(self._final(entry, moment))
                else:
                    self.live.pop(entry.id, None)
                    self.skip.add(entry.id)
            for entry in ended:
                self.closing.discard(entry.id)
        return out

    def _final(self, entry, moment):
        self._resolve((entry.orig.src, entry.orig.dst, entry.reply.src if entry.reply else None))
        first = self.live.pop(entry.id, None)
        seen = datetime.fromtimestamp(first[0], timezone.utc) if first else moment
        return self._allowed(entry, seen, moment, final=True)

    def _allowed(self, entry, first_seen, moment, final):
        return flow_record.allowed(entry, node=self.node, network=self.network, first_seen=first_seen, now=moment,
                                   attribution=self.attribution, policy_ref=self._policy_ref, final=final,
                                   flow_key=flow_record.flow_id(self.node, entry.id, entry.start_ns))

    def _policy_ref(self, number):
        if not number:
            return None
        policy = next((c for c in self.agent.controllers if c.name == "policy"), None)
        ref = policy.numbers.ref(number) if policy is not None else None
        return ref or f"policy number {number}"

    def _interim(self) -> list:
        """Updates of the connections alive for an interval since their last record."""
        due = time.monotonic() - self.interval
        if not any(last <= due for _, last in list(self.live.values())):
            return []
        try:
            entries = conntrack.dump()
        except DatapathError as exc:
            self.agent.log.warning(f"conntrack not read for interim flow records: {exc}", extra=self.agent.extra())
            return []
        moment, out, alive = now(), [], set()
        for entry in entries:
            alive.add(entry.id)
            known = self.live.get(entry.id)
            if known is None or known[1] > due:
                continue
            if not self._ours(entry):
                self.live.pop(entry.id, None)
                continue
            known[1] = time.monotonic()
            self._resolve((entry.orig.src, entry.orig.dst))
            out.append(self._allowed(entry, datetime.fromtimestamp(known[0], timezone.utc), moment, final=False))
        for ct_id, (_, last) in list(self.live.items()):
            if ct_id not in alive and last <= due:
                self.live.pop(ct_id, None)  # its DESTROY event was lost: nothing more will come
        for ct_id in [i for i in list(self.done) if i not in alive]:
            self.done.pop(ct_id, None)
        return out

    def _emit(self, records):
        if not records:
            return
        written = self.journal.write(records)
        self.written += written
        metrics = self.agent.metrics
        for record in records:
            if not record.get("final", True):
                continue
            metrics.flows.labels(self.network, record["verdict"], record["policy"] or "").inc()
            pair = tuple((record.get(k) or "").partition("/")[0] or "-" for k in ("srcPod", "dstPod"))
            if pair not in self.pairs:
                if len(self.pairs) >= NAMESPACE_PAIRS:
                    pair = ("other", "other")
                else:
                    self.pairs.add(pair)
            total = (record["bytes"]["sent"] or 0) + (record["bytes"]["received"] or 0)
            if total:
                metrics.flow_bytes.labels(self.network, *pair).inc(total)
        if self.exporter is not None:  # allowed, denied and interim records alike (flows/ipfix.py)
            self.exporter.export(records)

    # -- names -------------------------------------------------------------------------------
    def _refresh_history(self):
        """New lines of this node's allocation history (read from where it stopped)."""
        try:
            size = os.stat(self.history_path).st_size
        except OSError:
            return
        if size < self.history_offset:
            self.history_offset = 0
        if size == self.history_offset:
            return
        try:
            with open(self.history_path, "rb") as handle:
                handle.seek(self.history_offset)
                data = handle.read(size - self.history_offset)
        except OSError:
            return
        complete = data.rpartition(b"\n")[0]
        if not complete:
            return
        self.history_offset += len(complete) + 1
        records = []
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        self.attribution.add(ipam_history.parsed(records))

    def _resolve(self, addresses):
        """Read the cluster's history when an address of the pod network is unknown (at
        most every UNKNOWN_REFRESH seconds) or every HISTORY_REFRESH seconds."""
        elapsed = time.monotonic() - self.history_refreshed
        unknown = any(ip is not None and not self.attribution.known(ip) and
                      any(ip in n for n in self.networks if n.version == ip.version) for ip in addresses)
        if elapsed < HISTORY_REFRESH and not (unknown and elapsed >= UNKNOWN_REFRESH):
            return
        self.history_refreshed = time.monotonic()
        try:
            records, _ = self.agent.registry.list_history(self.network)
        except RegistryError as exc:
            self.agent.log.warning(f"allocation history not read for flow names: {exc}", extra=self.agent.extra())
            return
        self.attribution.add(ipam_history.parsed(records))

    def close(self):
        self.stopping.set()
        try:
            self.queue.put(_STOP, timeout=1.0)
        except queue.Full:
            pass
        self.receiver.join(5.0)
        self.writer.join(5.0)
        self.events.close()
        self.journal.close()
        if self.exporter is not None:
            self.exporter.close()
