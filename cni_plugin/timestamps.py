"""Timestamps in weft's records: ISO-8601 UTC with microseconds and a Z (stdlib only)."""

from datetime import datetime, timezone


def now() -> datetime:
    return datetime.now(timezone.utc)


def format_ts(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds and a Z suffix."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> datetime:
    """ISO-8601 with or without a zone ("Z" allowed); no zone means UTC. ValueError if bad."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)
