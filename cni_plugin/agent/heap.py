"""weftd's long-lived objects, kept out of the cyclic garbage collector's full passes.

At N = 5,000 an agent holds some hundreds of thousands of long-lived objects (leases,
peers, plans).  Python's oldest-generation collection walks all of them: 40-65 ms on
this kind of machine, every two or three reconcile passes, since each pass's read
allocates thousands of short-lived objects that reach that generation.  Such a pause
lands on whatever a thread is doing, a lease change waiting to be programmed included:
it was the whole tail of the WireGuard churn figure (p99 113-120 ms at N = 5,000, 46 ms
with the heap settled; docs/scale.md).

Settling the heap is `gc.freeze()` after a full collection: what is alive then moves to
the permanent generation, which later collections skip (they still free anything whose
reference count drops to zero: frozen is not immortal).  What a frozen object can hide
is cyclic garbage, which only the collector frees; so the heap is settled again (thawed,
collected in full, frozen) every `interval` seconds (weftd: --resync-interval), and
nothing frozen stays unreclaimed longer than that.

The schedule: the first time every network is ready with its listing programmed (the
bulk of what lives long exists then), then every `interval`.  Only weftd's main thread
calls settle().
"""

import gc
import time


def settle(first: bool = False) -> None:
    """Thaw, collect everything, freeze what is still alive.  The first settle only
    freezes: moving the generations aside costs next to nothing, while the collection
    is the very pause this avoids (and it falls when the node starts taking pods); any
    cyclic garbage it freezes is freed by the next settle."""
    if not first:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


class HeapSettler:
    NOT_READY_POLL = 1.0  # how often the main thread looks at readiness before the first settle

    def __init__(self, interval: float, clock=time.monotonic, action=settle):
        self.interval = interval
        self.clock, self.action = clock, action
        self.next_at = None  # monotonic time of the next settle; None: not ready yet
        self.settled = 0

    def tick(self, programmed: bool) -> float:
        """Settle when due; returns how long the caller may sleep before the next tick."""
        now = self.clock()
        if self.next_at is None:
            if not programmed:
                return self.NOT_READY_POLL
            self.next_at = now
        if now >= self.next_at:
            self.action(first=not self.settled)
            self.settled += 1
            self.next_at = now + self.interval
        return max(0.0, self.next_at - now)
