"""The flow controller: one record per connection per node, while FlowLog is on.

Sources (docs/flows.md): allowed connections from the kernel's connection tracking
(datapath/conntrack.py: DESTROY events only, best effort, ENOBUFS counted: a
connection's final record is written when the kernel forgets its entry, for TCP after
TIME_WAIT; a dump every --flow-log-interval gives the interim records of every
connection still open, long-lived ones included); denied
attempts from the policy table's denied-flow sets (the policy controller hands them
over, denied()); the deciding policy from the connection's ct mark (flows/marks.py).
Only connections with an address of this network's pod network at either end are
recorded: the overlay's outer packets (VXLAN, WireGuard) carry node addresses.

Two threads of their own, never the network loop's: a receiver that only decodes and
queues (a bounded deque, the writer woken once per datagram burst: when the writer
falls behind, records are dropped and counted as "queue", the kernel is never slowed),
and a writer that names both ends through the
allocation history (flows/attribution.py, at the connection's start), writes the
journal (flows/journal.py) and exports IPFIX.  Every drop is counted in
weft_flows_dropped_total{network,reason}.
"""

import ipaddress
import json
import os
import threading
import time
from collections import deque
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
TCP = 6
HISTORY_REFRESH = 30.0    # seconds between readings of the cluster's allocation history
UNKNOWN_REFRESH = 1.0     # at most this often when an address of the pod network is unknown
NAMESPACE_PAIRS = 200     # label pairs of weft_flow_bytes_total before "other"
INSIDE_CACHE = 65536      # addresses whose membership of the pod networks is remembered
FINAL_WAIT = 600.0        # seconds a connection's final record may come after its last interim one
#                           (TIME_WAIT, 120 s by default, and the kernel's garbage collection)
GATHER = 0.02             # seconds each thread lets events gather after a burst: one wake-up and
#                           one journal write serve many connections (the socket's 8 MiB buffer
#                           holds seconds of events)
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
        self.pending = deque()          # items for the writer (append/popleft: atomic)
        self.wake = threading.Event()   # set once items were appended
        self.stopping = threading.Event()
        self.dropped = {}
        self.written = 0
        self.lost_reported = 0
        # shared by the two threads (single dict/set operations only):
        self.live = {}        # ct id -> [first seen (epoch seconds), last record written (monotonic)]:
        #                       connections an interim dump found (start times of entries without one)
        self.lingering = conntrack.lingering()  # TCP state -> ns an ended entry stays (re-read each interim)
        self.pairs = set()
        self.inside = {}       # address -> whether it is in the pod networks (_inside)
        self.resolved = set()  # pod-network addresses the attribution knows (_resolve)
        self.missed = set()    # pod-network addresses a history reading did not find (_resolve)
        self.counted = {}     # label values -> the metric's child (labels() looks them up slowly)
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
        self._offer_many([item])

    def _offer_many(self, items) -> None:
        room = QUEUE_SIZE - len(self.pending)
        if room < len(items):
            self._dropped("queue", len(items) - max(0, room))
            items = items[:max(0, room)]
        self.pending.extend(items)
        self.wake.set()

    def status(self) -> dict:
        return {"journal": self.journal.path, "written": self.written, "dropped": dict(self.dropped),
                "eventsLost": self.events.lost, "live": len(self.live), "journalError": self.journal.last_error,
                "ipfix": self.exporter.status() if self.exporter else None}

    # -- receiver ------------------------------------------------------------------------
    def _ours(self, entry) -> bool:
        return self._inside(entry.orig.src) or self._inside(entry.orig.dst)

    def _inside(self, ip) -> bool:
        """Whether an address is in this network's pod networks (remembered per address:
        a node sees the same few again and again; both threads ask, a dict is safe)."""
        found = self.inside.get(ip)
        if found is None:
            if len(self.inside) >= INSIDE_CACHE:
                self.inside.clear()
            found = self.inside[ip] = any(ip in n for n in self.networks if n.version == ip.version)
        return found

    def _receive(self):
        try:
            self._receive_until_stopped()
        finally:
            self.events.close()  # its own socket: closed by the thread that reads it

    def _receive_until_stopped(self):
        while not self.stopping.is_set():
            try:
                entries = self.events.receive(0.5)
            except DatapathError as exc:
                self.agent.log.error(f"conntrack events not read: {exc}", extra=self.agent.extra())
                self.stopping.wait(1.0)
                continue
            lost = self.events.lost
            if lost != self.lost_reported:
                self.agent.metrics.flow_events_lost.labels(self.network).inc(lost - self.lost_reported)
                self.lost_reported = lost
                self._status_soon()
            items = [("ct", entry) for entry in entries if self._ours(entry)]
            if items:
                self._offer_many(items)
            self.stopping.wait(GATHER)

    # -- writer ----------------------------------------------------------------------------
    def _write(self):
        next_interim = time.monotonic() + self.interval
        pending = self.pending
        while True:
            if not pending:
                self.wake.wait(max(0.0, next_interim - time.monotonic()))
                if pending and pending[-1] is not _STOP:
                    self.stopping.wait(GATHER)
            self.wake.clear()  # before draining: an append after this sets it again
            batch = []
            while pending and len(batch) < 4096:
                batch.append(pending.popleft())
            stop = any(item is _STOP for item in batch)
            if stop:  # what was queued before it is still written (20 ms of events gather)
                batch = [item for item in batch if item is not _STOP]
            try:
                records = self._records(batch)
                if time.monotonic() >= next_interim and not stop:
                    records += self._interim()
                    next_interim = time.monotonic() + self.interval
                    if self.exporter is not None:  # interim counters of a connection whose final never came
                        self.exporter.forget_stale(2 * self.interval + FINAL_WAIT)
                self._emit(records)
            except Exception as exc:  # a bug: report, keep serving the next batch
                self.agent.log.exception("flow records failed", extra=self.agent.extra(error=repr(exc)))
                self._dropped("internal-error", len(batch))
            if self.exporter is not None:
                self.exporter.tick()
            if stop:  # the writer's files and sockets, closed by the writer once it is done
                self.journal.close()
                if self.exporter is not None:
                    self.exporter.close()
                return

    def _records(self, batch) -> list:
        self._refresh_history()
        moment = now()
        out = []
        for item in batch:
            if item[0] == "denied":
                _, direction, flow, policies, seen = item
                self._resolve(flow[:2])
                out.append(flow_record.denied(direction, flow, policies, node=self.node, network=self.network,
                                              seen=seen, attribution=self.attribution))
                continue
            out.append(self._final(item[1], moment))  # ("ct", a destroyed entry of ours)
        return out

    def _final(self, entry, moment):
        self._resolve((entry.orig.src, entry.orig.dst, entry.reply.src if entry.reply else None))
        first = self.live.pop(entry.id, None)
        seen = datetime.fromtimestamp(first[0], timezone.utc) if first else moment
        linger = self.lingering.get(entry.tcp_state, 0) if entry.orig.proto == TCP else 0
        return self._allowed(entry, seen, moment, final=True, linger_ns=linger)

    def _allowed(self, entry, first_seen, moment, final, linger_ns=0):
        return flow_record.allowed(entry, node=self.node, network=self.network, first_seen=first_seen, now=moment,
                                   attribution=self.attribution, policy_ref=self._policy_ref, final=final,
                                   flow_key=flow_record.flow_id(self.node, entry.id, entry.start_ns),
                                   linger_ns=linger_ns)

    def _policy_ref(self, number):
        if not number:
            return None
        policy = next((c for c in self.agent.controllers if c.name == "policy"), None)
        ref = policy.numbers.ref(number) if policy is not None else None
        return ref or f"policy number {number}"

    def _interim(self) -> list:
        """Updates of every connection of ours still open, read from a dump of the table
        (every --flow-log-interval: a connection open longer than that gets at least one
        record per interval).  TCP connections that have closed (TIME_WAIT, CLOSE: their
        entries linger until their DESTROY brings the final record) are skipped before
        they are decoded, and keep what the interim records knew of them."""
        self.lingering = conntrack.lingering() or self.lingering
        present = set()  # ids still in the table: the open ones of ours, and the ended ones

        def wanted(ct_id, state):
            if state in conntrack.ENDED:
                present.add(ct_id)
                return False
            return True
        try:
            entries = conntrack.dump(wanted=wanted)
        except DatapathError as exc:
            self.agent.log.warning(f"conntrack not read for interim flow records: {exc}", extra=self.agent.extra())
            return []
        moment, out = now(), []
        for entry in entries:
            if not self._ours(entry):
                continue
            present.add(entry.id)
            known = self.live.get(entry.id)
            if known is None:
                known = self.live[entry.id] = [time.time(), 0.0]
            known[1] = time.monotonic()
            self._resolve((entry.orig.src, entry.orig.dst))
            out.append(self._allowed(entry, datetime.fromtimestamp(known[0], timezone.utc), moment, final=False))
        for ct_id in [i for i in list(self.live) if i not in present]:
            self.live.pop(ct_id, None)  # gone (its final record written) or its DESTROY event lost
        return out

    def _emit(self, records):
        if not records:
            return
        written = self.journal.write(records)
        self.written += written
        metrics = self.agent.metrics
        flows, octets = {}, {}  # summed over the batch, each label set counted once
        for record in records:
            if not record.get("final", True):
                continue
            key = (record["verdict"], record["policy"] or "")
            flows[key] = flows.get(key, 0) + 1
            src, dst = record.get("srcPod"), record.get("dstPod")
            pair = ((src or "").partition("/")[0] or "-", (dst or "").partition("/")[0] or "-")
            if pair not in self.pairs:
                if len(self.pairs) >= NAMESPACE_PAIRS:
                    pair = ("other", "other")
                else:
                    self.pairs.add(pair)
            total = (record["bytes"]["sent"] or 0) + (record["bytes"]["received"] or 0)
            if total:
                octets[pair] = octets.get(pair, 0) + total
        for key, count in flows.items():
            self._counter(metrics.flows, *key).inc(count)
        for pair, total in octets.items():
            self._counter(metrics.flow_bytes, *pair).inc(total)
        if self.exporter is not None:
            self.exporter.export(records)  # allowed, denied and interim records alike (flows/ipfix.py)

    def _counter(self, metric, *labels):
        key = (id(metric), *labels)
        child = self.counted.get(key)
        if child is None:
            child = self.counted[key] = metric.labels(self.network, *labels)
        return child

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
        """Read the cluster's history every HISTORY_REFRESH seconds, and when an address of
        the pod network is unknown: at once for an address not looked up before, at most
        every UNKNOWN_REFRESH seconds for one a reading did not find (a gateway is never
        found: it must not keep the history from being read for a pod just started).
        Addresses found are remembered (a holding never leaves the attribution)."""
        fresh = stale = False
        addresses = [_address(ip) for ip in addresses]  # a denied element's are text
        for ip in addresses:
            if ip is None or ip in self.resolved or not self._inside(ip):
                continue
            if self.attribution.known(ip):
                self.resolved.add(ip)
            elif ip in self.missed:
                stale = True
            else:
                fresh = True
        elapsed = time.monotonic() - self.history_refreshed
        if elapsed < HISTORY_REFRESH and not fresh and not (stale and elapsed >= UNKNOWN_REFRESH):
            return
        self.history_refreshed = time.monotonic()
        try:
            records, _ = self.agent.registry.list_history(self.network)
        except RegistryError as exc:
            self.agent.log.warning(f"allocation history not read for flow names: {exc}", extra=self.agent.extra())
            return
        self.attribution.add(ipam_history.parsed(records))
        if len(self.missed) >= INSIDE_CACHE:
            self.missed.clear()
        self.missed.update(ip for ip in addresses if ip is not None and ip not in self.resolved and
                           self._inside(ip) and not self.attribution.known(ip))

    def close(self):
        self.stopping.set()
        self.pending.append(_STOP)
        self.wake.set()
        self.receiver.join(5.0)
        self.writer.join(5.0)
        # each thread closes what it uses when it ends (never under a thread still using it);
        # a writer still writing what was queued before the stop finishes on its own
        if self.writer.is_alive():
            self.agent.log.warning("flow records queued before FlowLog stopped are still being written",
                                   extra=self.agent.extra())


def _address(ip):
    """An ipaddress object of an address given as one or as text (None: not one)."""
    if ip is None or not isinstance(ip, str):
        return ip
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None
