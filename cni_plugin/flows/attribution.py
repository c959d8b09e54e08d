"""Who held an address at a moment, from allocation history events (ipam/history.py):
the names a flow record carries, resolved when it is written.

A holding starts at an allocate event and ends at the release of the same
(ip, containerID, ifname, network), as ipam.history.holders() reads them; an address
released and given to another pod resolves to whichever pod held it at the flow's
start, never to the later holder.
"""

import bisect
import ipaddress


class Attribution:
    def __init__(self):
        self.spans = {}     # ip text -> sorted [(start, end or None, "namespace/name" or None)]
        self.starts = {}    # ip text -> the spans' starts (what pod() bisects)
        self.seen = set()   # (ts, event, ip, containerID, ifname) already taken in

    def add(self, events) -> int:
        """Take in (time, record) events (any order, duplicates ignored); returns how
        many were new."""
        fresh = []
        for moment, record in events:
            key = (record.get("ts"), record.get("event"), record.get("ip"), record.get("containerID"),
                   record.get("ifname"), record.get("network"))
            if key not in self.seen:
                self.seen.add(key)
                fresh.append((moment, record))
        if not fresh:
            return 0
        touched = {r["ip"] for _, r in fresh}
        self._events = getattr(self, "_events", {})
        for moment, record in fresh:
            self._events.setdefault(record["ip"], []).append((moment, record))
        for ip in touched:
            self.spans[ip] = _spans(self._events[ip])
            self.starts[ip] = [s[0] for s in self.spans[ip]]
        return len(fresh)

    def pod(self, ip, at):
        """"namespace/name" of the pod that held `ip` at `at` (None: nobody, or a holder
        without pod names)."""
        key = str(ipaddress.ip_address(ip)) if not isinstance(ip, str) else ip
        spans = self.spans.get(key)
        if not spans:
            return None
        index = bisect.bisect_right(self.starts[key], at) - 1
        while index >= 0:
            start, end, name = spans[index]
            if end is None or at < end:
                return name
            index -= 1
        return None

    def known(self, ip) -> bool:
        return str(ip) in self.spans


def _spans(events) -> list:
    """[(start, end, name)] of one address's holdings."""
    open_ = {}
    out = []
    for moment, record in sorted(events, key=lambda e: e[0]):
        key = (record.get("containerID"), record.get("ifname"), record.get("network"))
        if record.get("event") == "allocate":
            if key not in open_:
                ns, name = record.get("podNamespace"), record.get("podName")
                open_[key] = (moment, f"{ns}/{name}" if ns and name else None)
        elif key in open_:
            start, name = open_.pop(key)
            out.append((start, moment, name))
    out.extend((start, None, name) for start, name in open_.values())
    return sorted(out, key=lambda s: s[0])
