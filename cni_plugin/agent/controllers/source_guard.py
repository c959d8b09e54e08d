"""The source-guard controller: every pod of the network sends only as itself.

The plugin puts each pod's port under validation at ADD and writes its port record
(guard/ports.py); this controller keeps the kernel's table (datapath/source_guard.py)
equal to the records:
  - once the lease is held, and at every reconcile interval (and while etcd is away),
    the table is listed and repaired — a deleted table, chain, rule or element comes
    back, an element no record wants goes — and each repair is counted as drift;
    a pass lists the table when nftables' change notifications say something touched
    it, when the port records changed, and at least every --resync-interval whatever
    was notified (agent/read_schedule.py), so a lost notification delays a repair,
    never prevents it;
  - the drop counter becomes weft_spoofed_packets_total{network}, and every new
    (port, forged source) the kernel recorded becomes one denial-journal record naming
    the pod, logged once.
SIGTERM leaves the table in place: pods stay validated across an agent restart.
"""

import os
import time
from datetime import timedelta

from ...datapath import source_guard
from ...datapath.changes import TableChanges
from ...datapath.errors import DatapathError
from ...guard import ports
from ...timestamps import format_ts, now
from .. import denial_journal
from ..read_schedule import for_controller
from ..runtime import Controller
from . import register

EXEMPT_NAMES_SHOWN = 20


@register
class SourceGuardController(Controller):
    name = "source-guard"
    order = 22  # before the masquerade and policy controllers: pods are validated first

    def __init__(self, agent):
        super().__init__(agent)
        self.state = None         # "enforcing", "failed: ..."
        self.drift_repaired = 0
        self.last_check = None
        self.schedule = None       # when a pass lists the table (agent/read_schedule.py)
        self.records = {}
        self.records_stamp = None    # the records directory's mtime when last read
        self.records_at_listing = None  # the ports the last listing was compared with
        self.record_problems = []
        self.counted = 0           # the kernel counter's packets already in the metric
        self.spoofed = 0           # packets dropped since this agent started
        self.journalled = {}       # (set, port, value) -> monotonic time its kernel entry expires
        self.seen_records = 0

    @property
    def directory(self) -> str:
        return ports.directory(self.agent.options.run_dir, self.agent.name)

    def after_prepare(self):
        self.reconcile(first=self.state is None)

    def _follow(self):
        """Follow the table before its first listing: a change after it is never missed."""
        if self.schedule is None:
            table = source_guard.table_name(self.agent.name)
            self.schedule = for_controller(self, lambda: TableChanges(source_guard.FAMILY, table))
        return self.schedule

    def timers(self):
        return [(self.agent.options.reconcile_interval, self.reconcile)]

    def while_waiting(self):
        self.reconcile()

    # -- the pass ---------------------------------------------------------------------
    def reconcile(self, first=False):
        agent = self.agent
        self.last_check = time.time()
        read = self._follow().next()  # drained on every pass; None: the table is as last listed
        touched = read is not None
        before = self.state
        try:
            with ports.locked(self.directory):
                stamp = os.stat(self.directory).st_mtime_ns
                if touched or stamp != self.records_stamp:  # an ADD or DEL renamed or removed a file
                    records, problems = ports.read_all(self.directory)
                    self._report_record_problems(problems)
                    self.records, self.records_stamp = records, stamp
                    touched = touched or frozenset(records) != self.records_at_listing
                records = self.records
                if touched:
                    self.records_at_listing = frozenset(records)
                    wanted = [source_guard.Port(r.port, r.mac, r.sources) for r in records.values() if r.validated]
                    read = read or self.schedule.taken("port records changed")
                    outcome = source_guard.ensure(agent.name, wanted)
                    self.schedule.full_read_done(read)
                else:
                    outcome = None
            self.state = "enforcing"
            if outcome is not None and outcome.changed:
                self._repaired(outcome, first or before is None)
            self._harvest()
        except (DatapathError, OSError) as exc:
            self.schedule.again()
            self.state = f"failed: {exc}"
            agent.log.error(f"source validation not in place: {exc}", extra=agent.extra())
        if self.state != before:
            agent.status_changed()

    def _repaired(self, outcome, first: bool):
        agent = self.agent
        table = f"{source_guard.FAMILY} {source_guard.table_name(agent.name)}"
        if first:
            agent.log.info(f"source validation table {table} {outcome.action}: {'; '.join(outcome.details)}",
                           extra=agent.extra())
            return
        self.drift_repaired += 1
        agent.metrics.drift.labels(agent.name).inc()
        agent.log.warning(f"reconcile repaired source validation table {table}: {'; '.join(outcome.details)}",
                          extra=agent.extra())
        agent.status_changed()

    def _report_record_problems(self, problems):
        for problem in problems:
            if problem not in self.record_problems:
                self.agent.log.error(f"port record ignored: {problem}", extra=self.agent.extra())
        self.record_problems = problems

    # -- what was dropped -------------------------------------------------------------
    def _harvest(self):
        """The seen sets first (listing one set is cheap; reading the named counter makes
        libnftables load the whole ruleset, every table's elements included), then the
        counter only while something was dropped in the last minute or was journalled."""
        agent = self.agent
        entries = source_guard.dropped_sources(agent.name)
        if not entries and not self.journalled:
            return
        packets = source_guard.dropped_packets(agent.name)
        grown = packets - self.counted if packets >= self.counted else packets  # a rebuilt table starts at 0
        self.counted = packets
        if grown > 0:
            self.spoofed += grown
            agent.metrics.spoofed.labels(agent.name).inc(grown)
            agent.status_changed()
        self._journal(entries)

    def _journal(self, entries):
        agent = self.agent
        moment, records, current = time.monotonic(), [], {}
        for set_name, port, value, expires in entries:
            key = (set_name, port, value)
            current[key] = moment + expires
            if key in self.journalled and moment < self.journalled[key]:
                continue
            records.append(self._record(set_name, port, value, expires))
        self.journalled = current
        if not records:
            return
        try:
            denial_journal.append(agent.options.state_dir, agent.name, records)
        except OSError as exc:
            where = denial_journal.path(agent.options.state_dir, agent.name)
            agent.log.error(f"spoofed packets not journalled in {where}: {exc.strerror}", extra=agent.extra())
        for record in records:
            who = record["srcPod"] or f"the pod on {record['interface']}"
            agent.log.warning(f"source validation dropped what {who} sent as {record['src']}: {record['reason']}",
                              extra=agent.extra(interface=record["interface"]))

    def _record(self, set_name: str, port: str, value: str, expires: int) -> dict:
        holder = self.records.get(port)
        first_seen = now() - timedelta(seconds=max(0, source_guard.SEEN_TIMEOUT - expires))
        return {"ts": format_ts(first_seen), "node": self.agent.node.name, "network": self.agent.name,
                "kind": "spoofed", "direction": "egress", "interface": port,
                "srcPod": holder.pod if holder else None,
                "podAddresses": [str(a) for a in holder.addresses] if holder else [],
                "podMac": holder.mac if holder else None,
                "src": value, "reason": source_guard.SEEN_SETS[set_name][1],
                "dst": None, "dstPod": None, "protocol": None, "port": None, "policies": []}

    def close(self):
        if self.schedule is not None:
            self.schedule.close()

    def status(self):
        exempt = [r for r in self.records.values() if not r.validated]
        return {"sourceValidation": {
            "table": f"{source_guard.FAMILY} {source_guard.table_name(self.agent.name)}",
            "state": self.state, "ports": len(self.records) - len(exempt), "exempt": len(exempt),
            "exemptPods": sorted(r.pod or r.port for r in exempt)[:EXEMPT_NAMES_SHOWN],
            "spoofedPackets": self.spoofed, "driftRepaired": self.drift_repaired,
            "recordProblems": self.record_problems[:5], "lastCheck": self.last_check,
            "kernelReads": self.schedule.status() if self.schedule is not None else None}}
