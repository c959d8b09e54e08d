"""Must this reconcile pass read the kernel?  One answer, shared by every controller.

Change notifications (datapath/changes.py) let a quiet pass skip a listing; they never
decide correctness alone.  ReadSchedule.next() answers, at the start of each pass:

  full read     when the notifications say something weft owns changed; when they
                cannot be trusted (the socket overflowed, or failed: a change, and the
                socket is opened again); when there is no notification socket at all;
                when the previous read or repair failed (again()); and in any case when
                the last full read began --resync-interval seconds ago or more,
                whatever was notified;
  partial read  otherwise, when the controller owns kinds of entry the kernel sends no
                notification for (e.g. WireGuard peers, behind generic netlink or
                wireguard-go's socket): those are read on every pass;
  nothing       otherwise.

The notification socket is drained on every call, before the read it decides: a change
made during the read is seen by the next pass.  The caller reports a full read that
succeeded with full_read_done(read), so the resync clock runs from the start of the
last full read that was compared; a read that failed or was not taken calls again().
Each answer is counted in weft_kernel_reads_total{network,controller,read,why} and in
the controller's status (status()), so a settled node shows its quiet passes.
"""

import time
from typing import Callable, NamedTuple, Optional

FULL, PARTIAL = "full", "unnotified"


class Read(NamedTuple):
    """One pass's answer: scope FULL or PARTIAL, why, and when it was decided."""

    scope: str
    why: str
    at: float

    @property
    def full(self) -> bool:
        return self.scope == FULL


class ReadSchedule:
    def __init__(self, name: str, follow: Optional[Callable], resync_interval: float,
                 unnotified: bool = False, warn: Callable = None, count: Callable = None,
                 clock: Callable = time.monotonic):
        """name: the controller's, for messages; follow(): a new change follower (an
        object with changed() and close(), e.g. TableChanges) or None when the
        controller has nothing the kernel notifies about; OSError when it cannot be
        opened.  unnotified: the controller owns entries without notifications.
        warn(text): logs why notifications are not used; count(scope, why): a metric."""
        self.name = name
        self.follow = follow
        self.resync_interval = resync_interval
        self.unnotified = unnotified
        self.warn = warn or (lambda text: None)
        self.count = count or (lambda scope, why: None)
        self.clock = clock
        self.follower = None
        self.pending = "first"       # why the next pass reads in full (None: nothing pending)
        self.last_full = None        # clock() when the last full read that was compared began
        self.last_full_wall = None   # the same, as wall-clock time for the status
        self.last_full_why = None
        self.passes = {"full": 0, PARTIAL: 0, "skipped": 0}
        self.quiet_since_full = 0    # passes since the last full read that read less
        self._open()

    def _open(self) -> None:
        if self.follow is None or self.follower is not None:
            return
        try:
            self.follower = self.follow()
        except OSError as exc:
            self.follower = None
            self.warn(f"{self.name}: cannot follow kernel changes ({exc}); every reconcile pass reads the kernel")

    def _notified(self) -> Optional[str]:
        """Why the notifications call for a full read (None: they say nothing changed)."""
        if self.follow is None:
            return None
        self._open()
        if self.follower is None:
            return "unfollowed"
        try:
            return "notified" if self.follower.changed() else None
        except OSError as exc:  # the socket is lost: whatever it held is unknown
            self.warn(f"{self.name}: kernel change notifications failed ({exc}); reading the kernel, "
                      "following again")
            self._close_follower()
            self._open()
            return "notifications lost"

    def next(self) -> Optional[Read]:
        """This pass's read, or None: nothing to read (drains the notifications)."""
        now = self.clock()
        notified = self._notified()  # drained on every pass, whatever else is due
        why = self.pending or notified
        if why is None and (self.last_full is None or now - self.last_full >= self.resync_interval):
            why = "resync"
        if why is not None:
            self.pending = why  # until full_read_done()
            read = Read(FULL, why, now)
        elif self.unnotified:
            read = Read(PARTIAL, "unnotified", now)
        else:
            read = None
        self._counted(read)
        return read

    def _counted(self, read: Optional[Read]) -> None:
        if read is None:
            self.passes["skipped"] += 1
            self.quiet_since_full += 1
            return
        self.passes[read.scope] += 1
        if not read.full:
            self.quiet_since_full += 1
        self.count(read.scope, read.why)

    def taken(self, why: str) -> Read:
        """A full read the controller takes outside next() (e.g. after a fresh listing):
        counted like the others; report it with full_read_done() too."""
        read = Read(FULL, why, self.clock())
        self.passes["full"] += 1
        self.count(FULL, why)
        return read

    def full_read_done(self, read: Read) -> None:
        """A full read decided as `read` was taken and compared (the repair may still
        have failed: call again() after this then)."""
        self.pending = None
        if self.last_full is None or read.at >= self.last_full:
            self.last_full = read.at
            self.last_full_wall = time.time() - (self.clock() - read.at)
            self.last_full_why = read.why
        self.quiet_since_full = 0

    def again(self, why: str = "retry") -> None:
        """The next pass reads in full (a read failed or was not taken, a write failed)."""
        self.pending = self.pending or why

    def follow_anew(self, follow: Optional[Callable]) -> None:
        """Follow something else from now on (e.g. a device made again, with a new
        index); the next pass reads in full."""
        self._close_follower()
        self.follow = follow
        self.pending = "first"
        self._open()

    def _close_follower(self) -> None:
        if self.follower is not None:
            try:
                self.follower.close()
            except OSError:
                pass
            self.follower = None

    def close(self) -> None:
        self._close_follower()

    def status(self) -> dict:
        return {"full": self.passes["full"], "unnotified": self.passes[PARTIAL],
                "skipped": self.passes["skipped"], "quietSinceFull": self.quiet_since_full,
                "lastFull": self.last_full_wall, "lastFullWhy": self.last_full_why,
                "resyncInterval": self.resync_interval,
                "notifications": self.follow is not None and self.follower is not None}


DEFAULT_RESYNC_INTERVAL = 300.0  # weftd's --resync-interval default (agent/options.py)


def for_controller(controller, follow: Optional[Callable], unnotified: bool = False) -> ReadSchedule:
    """A controller's schedule: --resync-interval from the agent's options, warnings in
    its log, each read counted in weft_kernel_reads_total."""
    agent = controller.agent
    interval = getattr(agent.options, "resync_interval", DEFAULT_RESYNC_INTERVAL)
    reads = agent.metrics.kernel_reads
    return ReadSchedule(controller.name, follow, interval, unnotified=unnotified,
                        warn=lambda text: agent.log.warning(text, extra=agent.extra()),
                        count=lambda scope, why: reads.labels(agent.name, controller.name, scope, why).inc())
