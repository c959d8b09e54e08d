"""One network served by weftd: the controller runtime's loop for that network.

Each network runs in its own thread, so a broken network (bad config in etcd, no free
subnet) never stops the others.  The loop prepares every controller (config, lease,
device, subnet file), lists the leases, hands the listing to each controller, then
serves watch events and timers until the watch ends (re-list) or the agent stops.
Failures back off and, meanwhile, controllers keep the datapath repaired against the
last known leases (etcd outages change nothing in the kernel).

Shared state the controllers read and write: config, held (HeldLease), peers, mtu,
problem, conflict, config_problem (a config change this agent refuses to apply live),
setting_problems (keys of the config this node cannot honour, report_setting: reported,
never a reason to be not ready), fatal (a node identity collision: weftd exits).
"""

import threading
import time

from .. import paths
from ..datapath.errors import DatapathError
from ..subnet.lease import ConfigError
from ..subnet.lease_manager import LeaseConflict, NodeCollision, NoFreeSubnet
from ..subnet.registry import RegistryError
from ..subnet import status_file
from .controllers import all_controllers
from .runtime import Backoff, EventQueue, Timers


class NetworkAgent:
    def __init__(self, name, registry, options, node, metrics, log, source=None):
        self.name = name
        self.registry = registry
        self.source = source or registry  # where lease listings and events come from (runtime.LeaseSource)
        self.options = options
        self.node = node  # agent.node.NodeIdentity
        self.metrics = metrics
        self.log = log
        self.config = None
        self.held = None
        self.peers = {}  # key -> Lease of every other node
        self.mtu = None
        self.problem = "starting"
        self.conflict = None
        self.config_problem = None
        self.setting_problems = {}  # config key -> why this node cannot honour it (report_setting)
        self.fatal = None
        self.on_fatal = lambda: None  # set by main: stop the whole agent
        self._status_dirty = False
        self._status_lock = threading.Lock()
        self.events = EventQueue()
        self.stopping = threading.Event()
        self.controllers = [cls(self) for cls in all_controllers()]
        self.thread = threading.Thread(target=self._run, name=f"weftd-{name}", daemon=True)

    # -- lifecycle ---------------------------------------------------------
    def start(self):
        # the file a previous run left says "ready": replace it before anything can read it
        self.write_status()
        self.thread.start()

    def stop(self, timeout=10.0):
        self.stopping.set()
        self.events.stop()
        self.thread.join(timeout)
        for controller in self.controllers:
            try:
                controller.close()
            except Exception as exc:  # close the others all the same
                self.log.exception(f"{controller.name} controller failed to close",
                                   extra=self.extra(error=repr(exc)))

    @property
    def masquerade_installed(self) -> bool:
        """The masquerade controller holds this network's node-wide table."""
        return any(getattr(c, "state", None) == "installed" for c in self.controllers
                   if c.name == "masquerade")

    def attaching(self, ips, namespace, name) -> None:
        """A pod is being added through this agent: controllers that key kernel state by
        pod address (policy) take it in now, before ADD returns; one that raises refuses
        the ADD.  Called from a CNI worker thread."""
        for controller in self.controllers:
            controller.attaching(ips, namespace, name)

    def detaching(self, ips) -> None:
        """A pod's addresses are about to be released (the background teardown of a DEL
        served by this agent): controllers keyed by pod address drop them first."""
        for controller in self.controllers:
            controller.detaching(ips)

    @property
    def ready(self) -> bool:
        return self.problem is None and self.conflict is None and self.config_problem is None

    @property
    def programmed(self) -> bool:
        """Ready, and the overlay's first pass has programmed the peers it listed."""
        return self.ready and self.controller("overlay").synced_once

    @property
    def reason(self):
        """Why the network is not ready (None when it is)."""
        return self.fatal or self.conflict or self.problem or self.config_problem

    def report_setting(self, key: str, problem) -> None:
        """A key of the network config this node cannot honour (problem: a message naming
        the knob and the fix, e.g. FlowLog without br_netfilter), or None once it is
        honoured or no longer set.  Reported, not fatal: logged once, the status's
        `configProblems` (weftctl status), weft_config_problem{key} 1; readiness, /readyz
        and CNI STATUS do not depend on it (pods keep starting).  Any thread."""
        if self.setting_problems.get(key) == problem:
            return
        if problem is None:
            self.setting_problems.pop(key, None)
            self.log.info(f"config problem of {key} resolved", extra=self.extra())
        else:
            self.setting_problems[key] = problem
            self.log.error(problem, extra=self.extra(key=key))
        self.metrics.config_problem.labels(self.name, key).set(0 if problem is None else 1)
        self.write_status()

    def extra(self, **more):
        lease = self.held.lease.key if self.held else None
        return {"network": self.name, "node": self.node.name, "lease": lease, **more}

    def controller(self, name: str):
        return next(c for c in self.controllers if c.name == name)

    def command(self, name: str) -> None:
        """Queue an operator command for this network's loop (from a signal handler)."""
        self.events.post("command", name)

    def _each(self, hook: str, *args):
        """Run a hook of every controller in order; the first exception ends the pass
        (the loop backs off and starts again from prepare)."""
        for controller in self.controllers:
            getattr(controller, hook)(*args)

    def _each_guarded(self, hook: str, *args):
        """Run a hook of every controller; one that fails is logged and the others run."""
        for controller in self.controllers:
            try:
                getattr(controller, hook)(*args)
            except Exception as exc:  # a bug must not end the network's thread
                self.log.exception(f"{controller.name} controller failed in {hook}",
                                   extra=self.extra(error=repr(exc)))

    # -- main loop ---------------------------------------------------------
    def _run(self):
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                self._each("prepare")
                self._each("after_prepare")
                self._serve()
                backoff.reset()
                continue
            except RegistryError as exc:
                self.metrics.etcd_errors.labels(self.name).inc()
                self._trouble(f"etcd unavailable: {exc}", "warning")
            except ConfigError as exc:
                self._trouble(f"network config unusable: {exc}", "error")
            except NoFreeSubnet as exc:
                self._trouble(str(exc), "error")
            except NodeCollision as exc:  # two agents, one node name: never fight over the lease
                self.fatal = self.conflict = str(exc)
                self.metrics.collision.labels(self.name).set(1)
                self._trouble(None, "error", f"fatal: {exc}")
                self.on_fatal()
                return
            except DatapathError as exc:  # e.g. no WireGuard at all: names the package
                self._trouble(f"datapath: {exc}", "error")
            except LeaseConflict as exc:
                self.conflict = str(exc)
                self.metrics.conflict.labels(self.name).set(1)
                self._trouble(None, "error", str(exc))
            except Exception as exc:  # a bug: report, keep the datapath, retry
                self.log.exception("network loop failed", extra=self.extra(error=repr(exc)))
                self._trouble(f"internal error: {exc!r}", None)
            self._wait(backoff.next())

    def _trouble(self, problem, level, message=None):
        if problem is not None:
            self.problem = problem
        self.metrics.ready.labels(self.name).set(0)
        if level:
            getattr(self.log, level)(message or problem, extra=self.extra())
        self.write_status()

    def _wait(self, seconds):
        """Until the next attempt, let controllers keep the kernel in line (the repair
        counts against the wait, as a retry should not come later for it)."""
        deadline = time.monotonic() + seconds
        self._each_guarded("while_waiting")
        while not self.stopping.is_set():  # watch events now are stale: the next listing covers them
            left = deadline - time.monotonic()
            event = self.events.get(timeout=left) if left > 0 else None
            if event is None or event[0] == "stop":
                return

    # -- steady state: one listing, then watch events and timers ---------------
    def _serve(self):
        self._each("before_sync")
        raw, revision = self.source.list_leases(self.name)
        self._each("sync", raw)
        # read after the listing and watched from it: a change in between arrives twice at
        # worst (applying a config is idempotent), never not at all
        self._each("on_config_event", self.registry.get_network_config(self.name))
        cancel = self.source.watch_leases(self.name, revision + 1, self._on_watch)
        try:
            cancel_config = self.registry.watch_config(self.name, revision + 1, self._on_config_watch)
        except BaseException:
            cancel()
            raise
        try:
            self._event_loop()
        finally:
            cancel_config()
            cancel()

    def _on_watch(self, kind, key, value, revision, created=0):
        self.events.post(kind, key, value, created=created)

    def _on_config_watch(self, kind, key, value, revision, created=0):
        if kind == "resync":
            self.events.post(kind)
        else:
            self.events.post("config", None, value if kind == "put" else None)

    def _event_loop(self):
        timers = Timers([t for c in self.controllers for t in c.timers()])
        while not self.stopping.is_set():
            event = self.events.get(timeout=timers.wait())
            if event is not None:
                kind, key, value, received, created = event
                if kind == "stop":
                    return
                if kind == "resync":
                    self.log.info("watch ended; relisting leases", extra=self.extra())
                    return
                if kind == "command":
                    self._each("on_command", key)
                    timers.due()
                    continue
                if kind == "config":
                    self._each("on_config_event", value)
                elif kind == "call":
                    value()
                else:
                    self.metrics.events.labels(self.name, kind).inc()
                    self._each("on_lease_event", kind, key, value, received, created)
            timers.due()
            if self._status_dirty and self.events.empty():
                self.write_status()

    def call_soon(self, fn) -> None:
        """Run fn on this network's loop, after the events queued before it (from any
        thread; dropped if the loop is waiting out a failure: it re-lists afterwards)."""
        self.events.post("call", None, fn)

    def status_changed(self):
        """Something in the status changed on a watch event: the file is written once the
        queue has no more events (a burst costs one write of the N-peer file, not one
        per event)."""
        self._status_dirty = True

    def write_status(self):
        with self._status_lock:  # the loop and the policy thread both write: the last snapshot lands last
            self._write_status()

    def _write_status(self):
        self._status_dirty = False
        status = {"network": self.name, "node": self.node.name, "nodeID": self.node.node_id,
                  "ready": self.ready, "problem": self.problem or self.config_problem,
                  "configProblems": dict(self.setting_problems),
                  "conflict": self.conflict, "fatal": self.fatal, "lease": None, "backend": None,
                  "peers": [], "refused": [], "driftRepaired": 0, "lastReconcile": None}
        for controller in self.controllers:
            try:
                status.update(controller.status())
            except Exception as exc:  # the rest of the status is still worth writing
                self.log.exception(f"{controller.name} controller failed to report status",
                                   extra=self.extra(error=repr(exc)))
        try:
            status_file.write(paths.status_file(self.options.run_dir, self.name), status)
        except OSError as exc:  # a full or read-only run dir: say so, keep serving
            self.log.error(f"cannot write the status file: {exc}", extra=self.extra())
