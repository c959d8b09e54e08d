"""weftd's small controller runtime: one event loop per network, timers, backoff.

A network's loop (network.NetworkAgent) lists leases from a LeaseSource and owns a
queue of events (watch events, stop),
a set of periodic timers, and the controllers registered in agent/controllers/.
Controllers are called from that one thread only, so they need no locks of their own.

A controller subclasses Controller and overrides the hooks it needs:
  prepare()            (re)start: config, lease, devices; may raise (the loop backs off)
  after_prepare()      once every controller's prepare() succeeded
  before_sync()        before each full listing of leases
  sync(raw)            after each full listing: raw = [(key, value, etcd lease id)]
  on_lease_event(kind, key, value, received, created)   one watch event ("put"/"delete";
                       created: the key's etcd create revision, 0 on delete)
  on_config_event(text)  the network's config key as read after each listing and on every
                       change (None: deleted); the lease controller applies or refuses it
  config_changed(old, new)  a live-safe config change was applied (agent.config is new):
                       MTU, IPMasq, SubnetMin/Max; e.g. a masquerade controller re-reads it
  on_command(name)     an operator's request to the running agent (e.g. "rotate-key" on SIGHUP)
  timers()             [(interval seconds, callable)] run while serving
  while_waiting()      between failed attempts (keep the datapath repaired)
  attaching(ips, ns, name)  a pod is being added through the agent (a CNI worker thread,
                       before ADD returns; raising refuses the ADD)
  detaching(ips)       a pod's addresses are about to be released (the background teardown
                       of a DEL served by the agent): drop them before they are
  status()             keys merged into the network's status file
  close()              the agent stops
"""

import queue
import random
import time
from typing import Callable, Optional, Protocol


class Controller:
    name = ""
    order = 50  # lower runs first in every hook

    def __init__(self, agent):
        self.agent = agent  # network.NetworkAgent: shared state, log, metrics, options

    def prepare(self) -> None: ...
    def after_prepare(self) -> None: ...
    def before_sync(self) -> None: ...
    def sync(self, raw: list) -> None: ...
    def on_lease_event(self, kind: str, key: str, value: str, received: float, created: int = 0) -> None: ...
    def on_config_event(self, text) -> None: ...
    def config_changed(self, old, new) -> None: ...
    def on_command(self, name: str) -> None: ...
    def timers(self) -> list:
        return []
    def while_waiting(self) -> None: ...
    def attaching(self, ips: list, namespace, name) -> None: ...
    def detaching(self, ips: list) -> None: ...
    def status(self) -> dict:
        return {}
    def close(self) -> None: ...


class LeaseSource(Protocol):
    """Where a network's leases come from (etcd's registry today; the Kubernetes API
    could be another): one listing, then a watch from the listing's revision.
    on_event(kind, key, value, revision, create_revision); kind "resync" ends the watch (re-list)."""

    def list_leases(self, network: str) -> tuple: ...

    def watch_leases(self, network: str, start_revision: int,
                     on_event: Callable[[str, Optional[str], Optional[str], int, int], None]) -> Callable[[], None]: ...
    def watch_config(self, network: str, start_revision: int,
                     on_event: Callable[[str, Optional[str], Optional[str], int, int], None]) -> Callable[[], None]: ...


class Backoff:
    """Doubling delays between failed attempts, reset on success.  With jitter j each
    delay is drawn within +-j of its nominal value (j=0.2: 80-120 %), so clients that
    failed together do not retry in step."""

    def __init__(self, low: float = 0.5, high: float = 5.0, jitter: float = 0.0):
        self.low, self.high, self.jitter = low, high, jitter
        self.delay = low

    def reset(self) -> None:
        self.delay = self.low

    def next(self) -> float:
        current = self.delay
        self.delay = min(self.delay * 2, self.high)
        return current * random.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else current


class Timers:
    """Periodic callables; due() runs the ones whose time has come."""

    def __init__(self, entries: list):
        now = time.monotonic()
        self.entries = [[now + interval, interval, fn] for interval, fn in entries]

    def wait(self) -> float:
        if not self.entries:
            return 3600.0
        return max(0.0, min(e[0] for e in self.entries) - time.monotonic())

    def due(self) -> None:
        now = time.monotonic()
        for entry in self.entries:
            if now >= entry[0]:
                entry[2]()
                entry[0] = now + entry[1]


class EventQueue:
    """Watch events, operator commands ("command", name) and the stop signal, in arrival order."""

    STOP = ("stop", None, None, 0.0, 0)

    def __init__(self):
        self.events = queue.Queue()

    def post(self, kind, key=None, value=None, received: float = None, created: int = 0) -> None:
        self.events.put((kind, key, value, time.monotonic() if received is None else received, created))

    def stop(self) -> None:
        self.events.put(self.STOP)

    def empty(self) -> bool:
        return self.events.empty()

    def get(self, timeout: float):
        """The next event, or None when the timeout passed first."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None
