"""Kernel reads off the network's loop: a reconcile's dumps never hold up watch events.

A reconcile pass is a read (route, neighbour and FDB dumps: the costly part, linear in
the number of peers) and a few writes.  BackgroundRead runs the read on a worker
thread with a netlink socket of its own (opened there, used only there; the overlay
controller's is datapath/owned_dump.py: kernel-filtered dumps, decoded by hand), and hands
the result back to the network's loop through `post` (NetworkAgent.call_soon), where
the comparison and every write happen: the loop stays the only writer of the kernel,
and watch events are applied while a read is under way.

Entries of leases the loop changed while a read was in flight are left to the watch
path (engine.reconcile_from's `unsettled`).  A read whose result arrives after the
world moved on (a relist, a device rebuilt: a new `generation`) is dropped.
"""

import queue
import threading


class BackgroundRead:
    def __init__(self, name: str, open_socket, read, post, log):
        self.open_socket, self.read, self.post, self.log = open_socket, read, post, log
        self.requests = queue.Queue()
        self.generation = 0
        self.pending = None  # (generation, set of lease keys changed since the read began)
        self.thread = threading.Thread(target=self._work, name=f"weftd-read-{name}", daemon=True)
        self.thread.start()

    def start(self, plan, done, kinds=None) -> bool:
        """Begin a read of `plan`'s entries (kinds: of these kinds only; None: all);
        done(plan, actual or None, unsettled, error) runs on the loop.  False when a read
        is still in flight."""
        if self.pending is not None:
            return False
        self.pending = (self.generation, set())
        self.requests.put((self.generation, plan, done, self.pending[1], kinds))
        return True

    def touched(self, lease_key: str) -> None:
        """The loop changed this lease's entries (call for every programmed/removed key)."""
        if self.pending is not None:
            self.pending[1].add(lease_key)

    def reset(self) -> None:
        """Forget any read in flight (its result will be dropped)."""
        self.generation += 1
        self.pending = None

    def close(self) -> None:
        self.requests.put(None)

    def _work(self) -> None:
        sock = None
        while True:
            request = self.requests.get()
            if request is None:
                break
            generation, plan, done, unsettled, kinds = request
            actual, error = None, None
            try:
                if sock is None:
                    sock = self.open_socket()
                actual = self.read(sock, plan, kinds)
            except Exception as exc:  # reported on the loop
                error = exc
            self.post(lambda g=generation, a=actual, e=error, p=plan, u=unsettled, d=done:
                      self._finish(g, p, a, u, e, d))
        if sock is not None:
            sock.close()

    def _finish(self, generation, plan, actual, unsettled, error, done) -> None:
        if generation != self.generation:
            return  # a relist or a rebuilt device since: the next pass reads again
        self.pending = None
        done(plan, actual, unsettled, error)
