"""weftd's background teardown: the second half of the DELs it serves (plugin/teardown.py).

A DEL served here cuts the pod off and writes a record under the plugin's dataDir;
submit() queues that record's key for the worker thread, which takes the attachment
lock and finishes it (veth deleted, source validation, policy sets and conntrack,
address released).  The queue is bounded (QUEUE_SIZE): when it is full the DEL
finishes its own teardown before it returns (back-pressure, never a record dropped).

Nothing is only in memory: the records are the truth.  The dataDirs that ever held
one are listed in <state-dir>/teardown-dirs, and at start the worker finishes every
record found there before taking new work (a DEL whose teardown was interrupted by an
agent kill; its address stays allocated until then).  A teardown that fails is
retried every RETRY_INTERVAL; an ADD of the same attachment or a GC finishes a record
themselves when they find one.  stop() lets the running teardown end and leaves the
rest on disk for the next start.

ADDs first: a teardown starts once no CNI call is in flight and none arrived for QUIET
seconds (calls_in_flight, last_call: the CNI server's), or YIELD_MAX after its DEL
at the latest (so a burst of DELs is not delayed more than that), since
a teardown competes with pod starts for the rtnl lock (the kernel's veth deletion holds
it through an RCU wait), the nftables tables and the interpreter: the pod that
replaces one just deleted starts first.  It never waits while it holds an
attachment's lock (a call may be waiting for that lock).
"""

import os
import queue
import threading
import time

from ..cni import invocation
from ..plugin import teardown

QUEUE_SIZE = 256
RETRY_INTERVAL = 5.0  # seconds between tries of a teardown that failed
YIELD_MAX = 2.0  # seconds a teardown waits for the node's CNI calls to pause (a burst of DELs ends first)
QUIET = 0.05  # seconds without a new call that count as a pause (a runtime's next call comes sooner)
YIELD_POLL = 0.005
DIRS_FILE = "teardown-dirs"
DEFAULT_LOCK_TIMEOUT = 10.0  # seconds; a record's own netconf lockTimeout is used when known
_STOP = None


class TeardownQueue:
    def __init__(self, state_dir: str, log, detaching=None, masquerades=None, calls_in_flight=None,
                 last_call=None, metrics=None):
        self.dirs_file = os.path.join(state_dir, DIRS_FILE)
        self.log = log
        self.context = invocation.Context("agent", agent_masquerades=masquerades, teardown=self,
                                          agent_detaching=detaching)
        self.queue = queue.Queue(QUEUE_SIZE)
        self.lock = threading.Lock()
        self.queued = set()       # (data_dir, host veth) in the queue or being finished
        self.failed = {}          # (data_dir, host veth) -> lock timeout, retried later
        self.dirs = self._read_dirs()
        self.stopping = threading.Event()
        self.thread = None
        self.finished = 0
        self.calls_in_flight = calls_in_flight or (lambda: 0)
        self.last_call = last_call or (lambda: 0.0)  # time.monotonic() of the last call's start
        self.metrics = metrics
        if metrics is not None:
            metrics.teardown_pending.set_function(self.pending)

    def yield_to_calls(self, submitted: float) -> None:
        """In the worker thread: wait until the node's CNI calls pause, at most until
        YIELD_MAX after `submitted` (the DEL's time.monotonic())."""
        if threading.current_thread() is not self.thread:
            return  # an ADD or GC finishing a teardown itself: it is the call
        deadline = submitted + YIELD_MAX
        while time.monotonic() < deadline and (self.calls_in_flight()
                                                or time.monotonic() - self.last_call() < QUIET):
            time.sleep(YIELD_POLL)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="weftd-teardown", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        try:
            self.queue.put_nowait(_STOP)
        except queue.Full:
            pass
        if self.thread is not None:
            self.thread.join(timeout)

    def pending(self) -> int:
        with self.lock:
            return len(self.queued) + len(self.failed)

    # -- DEL's side ------------------------------------------------------------------
    def submit(self, data_dir: str, host_veth: str, lock_timeout: float) -> bool:
        """Queue the record's teardown; False when the queue is full (the caller then
        finishes it itself)."""
        self._remember(data_dir)
        key = (data_dir, host_veth)
        with self.lock:
            if key in self.queued:
                return True
            try:
                self.queue.put_nowait((key, lock_timeout, time.monotonic()))
            except queue.Full:
                return False
            self.queued.add(key)
        return True

    def _read_dirs(self) -> set:
        try:
            with open(self.dirs_file) as handle:
                return {line.strip() for line in handle if line.strip().startswith("/")}
        except FileNotFoundError:
            return set()

    def _remember(self, data_dir: str) -> None:
        if data_dir in self.dirs:
            return
        with self.lock:
            if data_dir in self.dirs:
                return
            os.makedirs(os.path.dirname(self.dirs_file), mode=0o700, exist_ok=True)
            with open(self.dirs_file, "a") as handle:  # before the record is ever needed again
                handle.write(data_dir + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self.dirs.add(data_dir)

    # -- the worker ------------------------------------------------------------------
    def _run(self) -> None:
        self._recover()
        while not self.stopping.is_set():
            try:
                item = self.queue.get(timeout=RETRY_INTERVAL)
            except queue.Empty:
                self._retry()
                continue
            if item is _STOP:
                return
            key, lock_timeout, submitted = item
            self._finish(key, lock_timeout, submitted)
            with self.lock:
                self.queued.discard(key)

    def _recover(self) -> None:
        """Records left by an agent that was stopped or killed before finishing them."""
        for data_dir in sorted(self.dirs):
            for host_veth in teardown.pending(data_dir):
                if self.stopping.is_set():
                    return
                self.log.info(f"finishing the teardown of {host_veth} left in {data_dir} by a previous run")
                self._finish((data_dir, host_veth), DEFAULT_LOCK_TIMEOUT)

    def _retry(self) -> None:
        with self.lock:
            failed, self.failed = self.failed, {}
        for key, lock_timeout in failed.items():
            self._finish(key, lock_timeout)

    def _finish(self, key, lock_timeout: float, submitted: float = 0.0) -> None:
        data_dir, host_veth = key
        self.yield_to_calls(submitted)  # before the attachment's lock: a call may be waiting for it
        try:
            invocation.within(self.context, teardown.finish_locked, data_dir, host_veth, lock_timeout)
            self.finished += 1
        except Exception as exc:  # kept on disk; retried
            self.log.warning(f"teardown of {host_veth} ({data_dir}) failed, retrying in {RETRY_INTERVAL:g}s: {exc}")
            if self.metrics is not None:
                self.metrics.teardown_failed.inc()
            with self.lock:
                self.failed[key] = lock_timeout
