"""The network config key FlowLog: `true`, or {"IPFIX": "<host>:<port>"} (which turns
logging on too); absent, null or false: off."""

import ipaddress
import json
from dataclasses import dataclass
from typing import Optional


class FlowLogError(ValueError):
    """A FlowLog value that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class FlowLog:
    ipfix: Optional[tuple] = None  # (host, port) of the IPFIX collector

    def __str__(self) -> str:
        return f"IPFIX {self.ipfix[0]}:{self.ipfix[1]}" if self.ipfix else "on"


def _collector(where: str, text) -> tuple:
    if not isinstance(text, str):
        raise FlowLogError(f"{where}: FlowLog.IPFIX is {json.dumps(text)}, not a string; write the collector "
                           "as \"<host>:<port>\" (e.g. \"10.0.0.5:4739\")")
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FlowLogError(f"{where}: FlowLog.IPFIX {text!r} is not \"<host>:<port>\" with a port 1-65535 "
                           "(IPv6: \"[2001:db8::5]:4739\")")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        if len(host) > 253 or not all(label and len(label) <= 63 and label.replace("-", "").isalnum()
                                      and label.isascii() for label in labels):
            raise FlowLogError(f"{where}: FlowLog.IPFIX host {host!r} is neither an IP address nor a "
                               "DNS name") from None
    return host, int(port)


def parse(where: str, value) -> Optional[FlowLog]:
    """The FlowLog of a network config (None: off); FlowLogError naming the key."""
    if value is None or value is False:
        return None
    if value is True:
        return FlowLog()
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"IPFIX"})
        if unknown:
            raise FlowLogError(f"{where}: FlowLog has unknown key(s) {', '.join(map(repr, unknown))}; "
                               "the object takes only \"IPFIX\": \"<host>:<port>\"")
        return FlowLog(_collector(where, value["IPFIX"]) if "IPFIX" in value else None)
    raise FlowLogError(f"{where}: FlowLog is {json.dumps(value)}; use true, false, or "
                       "{\"IPFIX\": \"<host>:<port>\"}")
