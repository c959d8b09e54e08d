"""What weftd's ADDs last found of a bridge, so that the next ADD need not read it again.

An ADD makes sure its network's bridge exists (a bridge, up, with the netconf's MTU)
and carries the gateway addresses (links.ensure_bridge, links.ensure_gateway_address):
netlink requests that find everything in place on all but the first ADD of a node.
Served by weftd, the ADD asks BridgeFacts first.  A bridge found in place with these
settings is known to be unchanged while no link or address notification has named
its ifindex since with news (changes.LinkChanges: a different Link, an address
gone or added, the link deleted; joined when the facts are made, before any
check, and drained under the lock before every answer; the kernel queues a change's
notification before the request that made the change returns, so whatever changed
before the ADD asked is seen).

Staleness: facts are dropped on any notification naming their bridge, on an
overflowed socket, and when older than `max_age` (the backstop: a full check at
least that often, whatever the notifications said).  A check is not recorded when
another call drained the socket between its start and its record (those messages
were read without being judged against it).  Sysctls (accept_ra, forwarding) send no
notification: every ADD still sets them.  Standalone calls have no facts: every ADD
checks, as before.
"""

import threading
import time

from .changes import LinkChanges

MAX_AGE = 10.0  # seconds a bridge's facts are trusted at most


class BridgeFacts:
    """key: (bridge name, MTU, forceAddress, ((gateway, network), ...)): what one ADD
    checked.  known(key) -> (Link or None, token); record(key, link, token, checked_at)
    after a full check that began (time.monotonic()) at checked_at.  changes: a
    LinkChanges (made here, in this namespace or netns_path's, unless given)."""

    def __init__(self, max_age: float = MAX_AGE, netns_path: str = None, changes=None):
        self.max_age = max_age
        self._lock = threading.Lock()
        self._changes = changes if changes is not None else LinkChanges(netns_path)
        self._facts = {}  # key -> (Link, when its check began)
        self._clears = 0  # times the facts were dropped: an overflow or a failed read
        # drops them without a message read, and must still void checks begun before

    def known(self, key) -> tuple:
        with self._lock:
            try:
                changed = self._changes.changed()
            except OSError:
                changed = True  # the socket failed: trust nothing
            if changed:
                self._facts.clear()
                self._clears += 1
            entry = self._facts.get(key)
            if entry is not None and time.monotonic() - entry[1] > self.max_age:
                del self._facts[key]
                entry = None
            return (entry[0] if entry is not None else None), self._token()

    def _token(self) -> tuple:
        return self._changes.messages, self._clears

    def record(self, key, link, token: tuple, checked_at: float) -> None:
        with self._lock:
            if token != self._token():
                return  # notifications were read, or the facts dropped, since this check began
            self._facts[key] = (link, checked_at)
            self._changes.watched = {known.index: known for known, _ in self._facts.values()}

    def close(self) -> None:
        self._changes.close()
