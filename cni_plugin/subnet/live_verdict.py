"""validation.validate kept up to date one watch event at a time (O(1) per event).

validation.validate judges a whole listing: every row parsed and checked, then the
candidates taken oldest first, each refused when it overlaps one already taken.  Run
on every watch event that is O(N) JSON parsing and address-set work per event, which
at thousands of nodes is most of an event's cost.

LiveVerdict holds the same verdict and updates it per event.  Every lease that passes
check_lease has exactly SubnetLen (and IPv6SubnetLen) bits inside the network, so two
candidates overlap iff they have the same IPv4 subnet or the same IPv6 subnet: a
dict lookup.  While no candidate overlaps another (the normal state of a cluster),
validate accepts every candidate, so an event that keeps it that way is applied
directly: a put whose lease passes check_lease and shares no subnet with another
candidate becomes valid; a delete or a refused put just leaves.  Any event that
touches an overlap (or happens while one exists) falls back to the full validate,
whose oldest-wins ordering is the rule; the result is always what validate would say.
"""

from typing import Optional

from .lease import ConfigError, Lease
from . import validation


class LiveVerdict:
    def __init__(self, config, rows=()):
        self.reset(config, rows)

    def reset(self, config, rows) -> None:
        """Judge a whole listing (rows: (key, value, lease id, create revision)): oldest
        first, as validate does, with the dict in place of address sets; the first overlap
        hands the whole listing to validate."""
        self.config = config
        self.rows = {row[0]: tuple(row) for row in rows}
        self.verdict = validation.Verdict()
        self._overlaps = False
        self._by_subnet = {}
        for key, value, _lease_id, created in sorted(self.rows.values(), key=lambda r: (r[3], r[0])):
            self.verdict.created[key] = created
            lease = self._judge_alone(key, value)
            if lease is None:
                continue
            if any(s is not None and s in self._by_subnet for s in (lease.subnet, lease.ipv6_subnet)):
                self._full()
                return
            self.verdict.valid[key] = lease
            self._remember(key, lease)

    @property
    def valid(self) -> dict:
        return self.verdict.valid

    @property
    def refused(self) -> dict:
        return self.verdict.refused

    def apply(self, kind: str, key: str, value: Optional[str] = None, created: int = 0) -> Optional[set]:
        """One watch event ("put"/"delete"); the keys whose verdict may have changed, or
        None after a full re-judgement (any key may have changed)."""
        old_row = self.rows.get(key)
        if kind == "put":
            # a rewrite keeps the create revision the listing saw (the watch sends it too)
            self.rows[key] = (key, value, old_row[2] if old_row else 0, created or (old_row[3] if old_row else 0))
        else:
            self.rows.pop(key, None)
        if self._overlaps:
            return self._full()
        verdict = self.verdict
        was_candidate = verdict.valid.pop(key, None)
        if was_candidate is not None:
            self._forget(key, was_candidate)
        verdict.refused.pop(key, None)
        verdict.created.pop(key, None)
        if kind != "put":
            return {key}
        row = self.rows[key]
        verdict.created[key] = row[3]
        lease = self._judge_alone(key, value)
        if lease is None:
            return {key}
        if any(s is not None and s in self._by_subnet for s in (lease.subnet, lease.ipv6_subnet)):
            return self._full()  # a new overlap: oldest wins, as validate decides
        verdict.valid[key] = lease
        self._remember(key, lease)
        return {key}

    # -- internals -------------------------------------------------------------
    def _judge_alone(self, key, value):
        """The Lease when it passes check_lease; else None, with its refusal recorded."""
        try:
            lease = Lease.from_json(key, value)
        except ConfigError as exc:
            self.verdict.refused[key] = validation.Refusal(key, validation.UNREADABLE, str(exc))
            return None
        problem = validation.check_lease(lease, self.config)
        if problem:
            self.verdict.refused[key] = validation.Refusal(key, problem[0], f"lease {key}: {problem[1]}",
                                                           lease.node_name)
            return None
        return lease

    def _full(self) -> None:
        """Judge every row again; every key may have changed (None)."""
        self.verdict = validation.validate(self.config, self.rows.values())
        self._overlaps = any(r.reason == validation.OVERLAP for r in self.verdict.refused.values())
        self._by_subnet = {}
        for key, lease in self.verdict.valid.items():
            self._remember(key, lease)
        return None

    def _remember(self, key, lease) -> None:
        for subnet in (lease.subnet, lease.ipv6_subnet):
            if subnet is not None:
                self._by_subnet[subnet] = key

    def _forget(self, key, lease) -> None:
        for subnet in (lease.subnet, lease.ipv6_subnet):
            if subnet is not None and self._by_subnet.get(subnet) == key:
                del self._by_subnet[subnet]
