"""The policy controller: NetworkPolicy enforced in this node's nftables table.

Inputs (etcd mode, `--policy-source etcd`, the default): the objects `weftctl apply`
stores under <prefix>/policy/, and the allocation records every node publishes
(history controller) plus this node's own IPAM journal, which say which pod
(K8S_POD_NAMESPACE/K8S_POD_NAME of its ADD) holds which address.  Both are listed,
then watched.  A policy change replans that policy's fragment (its sets and chain,
policy/compile.py, pure); a pod change (allocation record, Pod labels) recomputes that
address's set memberships; a Namespace change replans everything.  The difference to
what the kernel holds is applied as one transaction (datapath/policy_table.py).

The controller runs its own thread, so a slow etcd or a large replan never delays
the lease and overlay controllers.  The fast path: an ADD served by this agent calls
attaching() from the CNI worker thread before the pod has an interface; the pod is
in its sets when ADD returns (the ADD fails with "try again later" when the objects
could not be loaded: fail closed, never a pod the policy does not cover); a DEL's
background teardown calls detaching() before the address is released.

At every reconcile interval (and while etcd is away) the kernel is compared with the
last plan; a deleted table, set, element or rule is put back and counted as drift.
The table is listed when nftables' change notifications say something touched it
since the last listing, when that listing could not be used, and at least every
--resync-interval whatever was notified (agent/read_schedule.py).
SIGTERM leaves the table in place: pods stay isolated across an agent restart, and
the restarted agent replans from etcd.  Per-policy drop counters are harvested into
weft_policy_drops_total{network,policy}.
"""

import dataclasses
import ipaddress
import json
import os
import queue
import threading
import time
from datetime import timedelta

from ...datapath import policy_table, sysctl
from ...datapath.changes import TableChanges
from ...datapath.errors import DatapathError
from ...flows import marks
from ...ipam import history as ipam_history
from ...policy import compile as policy_compile
from ...policy.state import PolicyState
from ...subnet.registry import RegistryError
from ...timestamps import format_ts, now
from .. import denial_journal
from ..read_schedule import for_controller
from ..runtime import Backoff, Controller
from . import register

READY_WAIT = 10.0  # seconds an ADD waits for the first listing before it is refused
DENIAL_POLL = 1.0  # seconds between readings of the denied-flow sets
_STOP = ("stop", None, None, None, 0)
_RESYNC = "resync"


class _Relist(Exception):
    """A watch ended: list again."""


@register
class PolicyController(Controller):
    name = "policy"
    order = 40

    def __init__(self, agent):
        super().__init__(agent)
        self.enabled = getattr(agent.options, "policy_source", "etcd") != "none"
        self.lock = threading.Lock()
        self.state = PolicyState()
        self.loaded = threading.Event()
        self.applied = None        # the Table last programmed
        self.fragments = {}        # policy ref -> compile.Fragment
        self.local = ()            # this node's pod subnets
        self.events = queue.Queue()
        self.stopping = threading.Event()
        self.thread = None
        self.cancels = []
        self.drift_repaired = 0
        self.problem = "starting" if self.enabled else None
        self.bridge_problem = None
        self.counted = {}          # counter name -> packets already in the metric
        self.last_program_ms = None
        self.objects_source = None  # the registry (etcd mode) or a KubeSource
        self.published = None       # the summary last written to etcd
        self.seen_denials = {}     # (set, flow) -> monotonic time its element expires
        self.isolated_at_last_reading = True  # read once at first, whatever the table
        self.denials = 0
        self.enforced = 0          # the object generation the kernel table last took in
        self.enforced_digest = None  # and the digest of those objects
        self.schedule = None       # when a pass lists the table (agent/read_schedule.py)
        # the policies' numbers in ct marks and denied-flow elements (flows/marks.py)
        self.numbers = marks.PolicyNumbers(os.path.join(agent.options.state_dir, agent.name, marks.NUMBERS_FILE))

    # -- hooks ---------------------------------------------------------------
    def after_prepare(self):
        if not self.enabled or self.thread is not None:
            return
        lease = self.agent.held.lease
        self.local = tuple(n for n in (lease.subnet, lease.ipv6_subnet) if n is not None)
        # before the first programming: a change after it is never missed
        table = policy_compile.table_name(self.agent.name)
        self.schedule = for_controller(self, lambda: TableChanges(policy_table.FAMILY, table))
        self.thread = threading.Thread(target=self._run, name=f"weftd-policy-{self.agent.name}", daemon=True)
        self.thread.start()

    def attaching(self, ips, namespace, name):
        if not self.enabled:
            return
        if not self.loaded.wait(READY_WAIT):
            raise RuntimeError(f"the policy objects are not loaded yet ({self.problem or 'starting'})")
        with self.lock:
            changed = [ip for ip in ips if self.state.record({
                "event": "allocate", "ip": str(ip), "podNamespace": namespace, "podName": name,
                "node": self.agent.node.name, "ts": format_ts(now())})]
            if changed:
                idle = self._nothing_to_deny()
                self._addresses_changed(changed, "attach")
                if idle and not self._nothing_to_deny():  # the denial poll starts now, not at the reconcile
                    self.events.put(("wake", None, None, None, 0))

    def detaching(self, ips):
        """A DEL's background teardown, before the addresses are released: they leave
        the sets now (the release in the journal, read later, changes nothing more)."""
        if not self.enabled or not self.loaded.is_set():
            return  # the first listing reads the journal, which has the release by then
        with self.lock:
            changed = [ip for ip in ips if self.state.record({"event": "release", "ip": str(ip),
                                                              "ts": format_ts(now())})]
            if changed:
                self._addresses_changed(changed, "detach")

    def close(self):
        self.stopping.set()
        self.events.put(_STOP)
        self._cancel_watches()
        if self.thread is not None:
            self.thread.join(10.0)
        if self.schedule is not None:
            self.schedule.close()

    def status(self):
        if not self.enabled:
            return {"policy": {"source": "none"}}
        applied = self.applied
        return {"policy": {
            "source": self.agent.options.policy_source, "generation": self.enforced,
            "objects": self.enforced_digest,
            "table": f"{policy_compile.FAMILY} {policy_compile.table_name(self.agent.name)}",
            "policies": len(self.state.policies),
            "knownPods": len(self.state.holders),
            "localPods": sum(1 for ip in self.state.holders if any(ip in n for n in self.local)),
            "state": self.problem or self.bridge_problem or "enforcing",
            "rejected": dict(self.state.rejected), "driftRepaired": self.drift_repaired,
            "lastProgramMs": self.last_program_ms, "deniedFlows": self.denials,
            "rules": sum(len(r) for r in applied.chains.values()) if applied else 0,
            # the Kubernetes source's watch problems (lines skipped, streams failed)
            "watchErrors": getattr(self.objects_source, "problems", dict)(),
            "kernelReads": self.schedule.status() if self.schedule is not None else None}}

    # -- the controller's thread -------------------------------------------------
    def _run(self):
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                self._sync()
                backoff.reset()
                self._serve()
                continue
            except _Relist:
                self.agent.log.info("policy watch ended; listing again", extra=self.agent.extra())
                continue
            except RegistryError as exc:
                self.problem = f"etcd unavailable: {exc}"
                self.agent.log.warning(f"policy objects not read: {exc}", extra=self.agent.extra())
            except DatapathError as exc:
                self.problem = f"table not programmed: {exc}"
                self.agent.log.error(f"policy table not programmed: {exc}", extra=self.agent.extra())
            except Exception as exc:  # a bug: report, keep the kernel table, retry
                self.problem = f"internal error: {exc!r}"
                self.agent.log.exception("policy controller failed", extra=self.agent.extra(error=repr(exc)))
            finally:
                self._cancel_watches()
            self._write_status()
            self._reconcile()  # the last plan stays enforced while etcd is away
            self.stopping.wait(backoff.next())

    def _cancel_watches(self):
        cancels, self.cancels = self.cancels, []
        for cancel in cancels:
            cancel()

    def _local_records(self) -> list:
        path = os.path.join(self.agent.options.ipam_data_dir, self.agent.name, ipam_history.HISTORY_FILE)
        return [{**record, "node": self.agent.node.name} for _, record in ipam_history.read_events(path)]

    def _sync(self):
        agent, registry = self.agent, self.agent.registry
        try:
            sysctl.enable_bridge_netfilter()
            self.bridge_problem = None
        except DatapathError as exc:
            if self.bridge_problem is None:
                agent.log.error(f"same-node pod traffic is not policed: {exc}", extra=agent.extra())
            self.bridge_problem = f"same-node traffic not policed: {exc}"
        if self.objects_source is None:
            self.objects_source = registry
            if agent.options.policy_source == "kubernetes":
                from ..kube_source import KubeSource

                self.objects_source = KubeSource(
                    agent.options.kube_api_server or None, agent.options.kube_serviceaccount_dir,
                    errors=lambda reason: agent.metrics.kube_watch_errors.labels(agent.name, reason).inc(),
                    warn=lambda text: agent.log.warning(text, extra=agent.extra()))
        rows, revision = self.objects_source.list_policy_objects()
        records, history_revision = registry.list_history(agent.name)
        with self.lock:
            self.state.load_objects(rows, revision)
            self.state.load_holders(records + self._local_records())
            for suffix, reason in self.state.rejected.items():
                agent.log.error(f"policy object {suffix} ignored: {reason}", extra=agent.extra())
            self._program("sync")
            self._enforced_now()
        self.problem = None
        self.loaded.set()
        self.cancels.append(self.objects_source.watch_policy_objects(
            revision + 1, self._post_watch_event("objects")))
        self.cancels.append(registry.watch_history(
            agent.name, history_revision + 1, self._post_watch_event("history")))
        self._write_status()

    def _post_watch_event(self, source):
        """A watch callback queueing (source, kind, key, value, revision) for _handle."""
        return lambda kind, key, value, revision, created=0: self.events.put((source, kind, key, value, revision))

    def _serve(self):
        interval = self.agent.options.reconcile_interval
        due = time.monotonic() + interval
        due_denials = time.monotonic() + DENIAL_POLL
        while not self.stopping.is_set():
            # while nothing can be denied the thread sleeps until the reconcile, not each second
            wake = due if self._nothing_to_deny() else min(due, due_denials)
            try:
                batch = [self.events.get(timeout=max(0.0, wake - time.monotonic()))]
            except queue.Empty:
                if time.monotonic() >= due_denials:
                    self._collect_denials()
                    due_denials = time.monotonic() + DENIAL_POLL
                if time.monotonic() >= due:
                    self._reconcile()
                    due = time.monotonic() + interval
                continue
            while True:  # take every event already queued: one replan for a burst
                try:
                    batch.append(self.events.get_nowait())
                except queue.Empty:
                    break
            self._handle(batch)

    def _handle(self, batch):
        everything, refs, addresses = False, set(), set()
        with self.lock:
            generation = self.state.generation
            for source, kind, key, value, revision in batch:
                if source == "stop":
                    return
                if kind == _RESYNC:
                    raise _Relist()
                if source == "objects":
                    before = self.state.objects.get(key)
                    if kind == "put":
                        self.state.put_object(key, value, revision)
                        if key in self.state.rejected:
                            self.agent.log.error(f"policy object {key} ignored: {self.state.rejected[key]}",
                                                 extra=self.agent.extra())
                    else:
                        self.state.delete_object(key, revision)
                    kind_name = key.split("/", 1)[0]
                    if kind_name == "NetworkPolicy":
                        refs.add(key.split("/", 1)[1])
                    elif kind_name == "Pod":
                        ns_name = tuple(key.split("/")[1:3])
                        addresses.update(ip for ip, h in self.state.holders.items() if h[:2] == ns_name)
                    elif before is not None or key in self.state.objects:
                        everything = True
                elif kind == "put":
                    try:
                        record = json.loads(value)
                        ip = ipaddress.ip_address(str(record.get("ip")))
                    except (ValueError, AttributeError):
                        continue
                    if self.state.record(record):
                        addresses.add(ip)
            if everything or self.applied is None:
                self._program("watch")
            elif refs:
                self._program("watch", refs)
            if addresses and not everything:
                self._addresses_changed(addresses, "watch")
            elif generation != self.state.generation and not (everything or refs):
                self._log_programmed("watch", "unchanged")  # e.g. a Pod object of no pod here
            if generation != self.state.generation:  # else it stands (a failed batch relists)
                self._enforced_now()
        if everything or refs or addresses or generation != self.state.generation:
            self._write_status()

    # -- kernel ----------------------------------------------------------------------
    def _program(self, why: str, refs=None):
        """Replan the fragments of `refs` (policy refs; None: all) and apply (the caller
        holds the lock)."""
        started = time.monotonic()
        cluster, endpoints = self.state.cluster(), self.state.endpoints()
        members = policy_compile.prepare(cluster, endpoints, self.local)
        current = [p.ref for p in cluster.policies]
        if refs is None or self.applied is None:
            self.fragments = {p.ref: policy_compile.policy_fragment(p, cluster, endpoints, self.local, members,
                                                                    self.numbers.number(p.ref, current))
                              for p in cluster.policies}
        else:
            policies = {p.ref: p for p in cluster.policies}
            for ref in refs:
                if ref in policies:
                    self.fragments[ref] = policy_compile.policy_fragment(policies[ref], cluster, endpoints,
                                                                         self.local, members,
                                                                         self.numbers.number(ref, current))
                else:
                    self.fragments.pop(ref, None)
        self._apply(policy_compile.assemble(self.agent.name, self.fragments.values(), self.applied), why, started)

    def _addresses_changed(self, addresses, why: str):
        """Recompute the set memberships of these addresses only (a pod came, went or
        changed labels); the caller holds the lock."""
        if self.applied is None:
            self._program(why)
            return
        started = time.monotonic()
        cluster, applied = self.state.cluster(), self.applied
        sets = dict(applied.sets)
        adds, removes = {}, {}
        for ip in addresses:
            holder = self.state.holders.get(ip)
            pod = self.state.pod(holder[0], holder[1]) if holder else None
            wanted = policy_compile.memberships(cluster, ip, pod, any(ip in n for n in self.local))
            text = str(ip)
            isolated = {"in": False, "out": False}
            for frag in self.fragments.values():
                for name, (kind, interval, elements) in list(frag.sets.items()):
                    if interval:
                        continue
                    inside, should = text in elements, name in wanted
                    if inside != should:
                        frag.sets[name] = sets[name] = (kind, interval,
                                                        elements | {text} if should else elements - {text})
                        (adds if should else removes).setdefault(name, set()).add(text)
                if f"{frag.pid}_sel{ip.version}" in wanted:
                    isolated["in"] |= "Ingress" in frag.types
                    isolated["out"] |= "Egress" in frag.types
            for suffix, should in isolated.items():  # the iso sets follow from the P_sel sets
                name = f"iso_{suffix}{ip.version}"
                kind, interval, elements = sets[name]
                if (text in elements) != should:
                    sets[name] = (kind, interval, elements | {text} if should else elements - {text})
                    (adds if should else removes).setdefault(name, set()).add(text)
        commands = policy_table.element_commands(applied.name, {n: False for n in {*adds, *removes}}, adds, removes)
        if commands:
            policy_table.run(commands)
        self.applied = dataclasses.replace(applied, sets=sets)
        self.last_program_ms = round((time.monotonic() - started) * 1000, 2)
        if commands:
            self.agent.metrics.policy_programmed.labels(self.agent.name, "elements").inc()
        named = [f.ref for f in self.fragments.values() if f.named]
        if named:  # named ports follow the pods' container ports: replan those policies
            self._program(why, named)
        else:
            self._log_programmed(why, "elements" if commands else "unchanged")

    def _apply(self, table, why: str, started: float):
        if self.applied is None:
            self.counted = {}  # a rebuilt table's counters start from 0
        outcome = policy_table.apply(table, self.applied)
        self.applied = table
        self.last_program_ms = round((time.monotonic() - started) * 1000, 2)
        if outcome != "unchanged":
            self.agent.metrics.policy_programmed.labels(self.agent.name, outcome).inc()
        self._log_programmed(why, outcome)

    def _enforced_now(self):
        """Every transaction for the objects held has succeeded: the status may say so.
        (It reports this, not the state being planned: a status written by another thread
        mid-transaction, or after a failed one, must not claim what the kernel lacks.)"""
        self.enforced, self.enforced_digest = self.state.generation, self.state.digest()

    def _log_programmed(self, why: str, outcome: str):
        level = self.agent.log.info if why in ("watch", "sync") else self.agent.log.debug
        level("policy programmed", extra=self.agent.extra(policyGeneration=str(self.state.generation),
                                                          change=outcome, why=why, ms=self.last_program_ms))

    def _harvest(self, reset=False):
        """Add the drop counters' growth to the metric (reset: the table is about to be
        rebuilt and its counters start again from 0)."""
        applied = self.applied
        if applied is None:
            return
        try:
            found = policy_table.counters(applied.name)
        except DatapathError:
            return
        for name, packets in found.items():
            ref = applied.counters.get(name)
            grown = packets - self.counted.get(name, 0)
            if ref is not None and grown > 0:
                self.agent.metrics.policy_drops.labels(self.agent.name, ref).inc(grown)
            self.counted[name] = 0 if reset else packets
        if reset:
            self.counted = {}

    def _nothing_to_deny(self) -> bool:
        """No table, or no pod isolated now nor at the last reading and no flow left
        from before: the denied-flow sets can hold nothing new."""
        applied = self.applied
        return applied is None or (not policy_compile.isolates_any(applied)
                                   and not self.isolated_at_last_reading and not self.seen_denials)

    def _collect_denials(self):
        """Turn flows new in the denied-flow sets into journal records naming both
        workloads and the isolating policies.  Reads the kernel without the lock (the
        fast path must not wait for it); only the controller's thread calls this."""
        applied = self.applied
        if self._nothing_to_deny():  # the sets are not read (4 nft listings a second)
            return
        self.isolated_at_last_reading = policy_compile.isolates_any(applied)
        try:
            flows = policy_table.denied_flows(applied)
        except DatapathError as exc:
            self.agent.log.warning(f"denied flows not read: {exc}", extra=self.agent.extra())
            return
        with self.lock:
            self._denials_of(flows)

    def _denials_of(self, flows):
        """One record per denied tuple new in the sets; the policies are the kernel's
        answer: the numbers the isolating policies' drop rules wrote into the elements."""
        now_m = time.monotonic()
        grouped = {}  # (direction, (src, dst, protocol, port)) -> [numbers, seconds left]
        current = {}
        for set_name, flow, expires in flows:
            key = (set_name, flow)
            current[key] = now_m + expires
            if key in self.seen_denials and now_m < self.seen_denials[key]:
                continue
            entry = grouped.setdefault(("ingress" if "_in" in set_name else "egress", tuple(flow[:4])), [[], 0])
            entry[0].append(flow[4])
            entry[1] = max(entry[1], expires)
        self.seen_denials = current
        records = []
        flows_controller = next((c for c in self.agent.controllers if c.name == "flows"), None)
        for (direction, flow), (numbers, left) in grouped.items():
            policies = sorted({self.numbers.ref(n) or f"policy number {n}" for n in numbers if n})
            seen = now() - timedelta(seconds=max(0.0, policy_table.DENIED_TIMEOUT - float(left or 0)))
            if flows_controller is not None and flows_controller.logging:
                flows_controller.denied(direction, flow, policies, seen)
            records.append(self._denial_record(direction, flow, policies))
        if records:
            self._journal(records, legacy=flows_controller is None or not flows_controller.logging)

    def _denial_record(self, direction, flow, policies) -> dict:
        src_ip, dst_ip, protocol, port = flow
        record = {"ts": format_ts(now()), "node": self.agent.node.name, "kind": "policy",
                  "network": self.agent.name, "direction": direction, "src": str(src_ip), "dst": str(dst_ip),
                  "protocol": str(protocol).upper(), "port": int(port) if str(port).isdigit() else port,
                  "srcPod": None, "dstPod": None, "policies": policies}
        for role, ip in (("src", src_ip), ("dst", dst_ip)):
            try:
                endpoint = self.state.endpoint(str(ip))
            except ValueError:
                continue
            if endpoint.pod is not None:
                record[f"{role}Pod"] = endpoint.pod.ref
        return record

    def _journal(self, records, legacy=True):
        """Log the denials; legacy: into the denial journal too (with FlowLog on they are
        flow records of the flow journal instead)."""
        try:
            if legacy:
                denial_journal.append(self.agent.options.state_dir, self.agent.name, records)
        except OSError as exc:
            where = denial_journal.path(self.agent.options.state_dir, self.agent.name)
            self.agent.log.error(f"denied flows not journalled in {where}: {exc.strerror}", extra=self.agent.extra())
        self.denials += len(records)
        for record in records:
            self.agent.log.info(f"policy denied {record['direction']} {record['srcPod'] or record['src']} -> "
                                f"{record['dstPod'] or record['dst']} {record['protocol']}/{record['port']} "
                                f"(isolated by {', '.join(record['policies']) or 'a policy'})",
                                extra=self.agent.extra())

    def _reconcile(self):
        applied = self.applied
        if applied is None:
            return
        read = self.schedule.next()  # drained on every pass; None: the table is as last listed
        if read is None and self._nothing_to_deny():
            return  # and no drop counter can have grown
        try:  # the listing runs without the lock: an ADD meanwhile must not wait for it
            problems = policy_table.inspect(applied) if read is not None else []
        except DatapathError as exc:
            self.schedule.again()
            self.agent.log.error(f"policy table not read: {exc}", extra=self.agent.extra())
            return
        with self.lock:
            if self.applied is not applied:  # changed meanwhile: the next pass compares again
                self.schedule.again("raced")
                return
            try:
                if problems:
                    self._harvest(reset=True)
                    policy_table.apply(self.applied, None)
                    self.drift_repaired += 1
                    self.agent.metrics.drift.labels(self.agent.name).inc()
                    self.agent.log.warning(f"reconcile repaired policy table {self.applied.name}: "
                                           f"{'; '.join(problems[:5])}", extra=self.agent.extra())
                else:
                    self._harvest()
            except DatapathError as exc:
                self.schedule.again()
                self.agent.log.error(f"policy table not repaired: {exc}", extra=self.agent.extra())
                return
            if read is not None:
                self.schedule.full_read_done(read)
        if problems:
            self._write_status()

    def _write_status(self):
        try:
            self.agent.write_status()
        except Exception as exc:  # the status is a report; enforcement goes on
            self.agent.log.warning(f"status not written: {exc!r}", extra=self.agent.extra())
        self._publish_status()

    def _publish_status(self):
        """This node's generation in etcd, for `weftctl status --cluster` (once per change)."""
        mine = self.status().get("policy", {})
        summary = {k: mine.get(k) for k in ("generation", "objects", "policies", "rules", "state", "source")}
        if summary == self.published:
            return
        try:
            self.agent.registry.put_policy_status(self.agent.name, self.agent.node.name,
                                                  json.dumps({**summary, "ts": format_ts(now())}))
            self.published = summary
        except RegistryError as exc:  # the next change tries again
            self.agent.log.warning(f"policy status not published: {exc}", extra=self.agent.extra())
