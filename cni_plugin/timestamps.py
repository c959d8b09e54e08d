"""Timestamps in weft's records: ISO-8601 UTC with microseconds and a Z (stdlib only).

`datetime` is imported by the functions that need one, not here: the per-pod path
(an IPAM allocation's history record) only stamps the current time, which now_text()
does with `time` alone, so a standalone CNI call never loads datetime (and its C
extension).  Annotations name datetime as strings: it is not imported here."""

import time


_SECONDS = {}  # whole seconds -> their "YYYY-MM-DDTHH:MM:SS" (flow records come in bursts of one second)


def format_ns(ns: int) -> str:
    """format_ts() of nanoseconds since the epoch (microseconds kept), without datetime."""
    seconds, rest = divmod(ns, 1_000_000_000)
    text = _SECONDS.get(seconds)
    if text is None:
        if len(_SECONDS) > 64:
            _SECONDS.clear()
        text = _SECONDS[seconds] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{rest // 1000:06d}Z"


def now_text() -> str:
    """The current UTC time as format_ts(now()) spells it, without datetime."""
    return format_ns(time.time_ns())


def now() -> "datetime":
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def format_ts(moment: "datetime") -> str:
    """ISO-8601 UTC with microseconds and a Z suffix."""
    from datetime import timezone

    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> "datetime":
    """ISO-8601 with or without a zone ("Z" allowed); no zone means UTC. ValueError if bad."""
    from datetime import datetime, timezone

    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
