"""One CNI invocation of weft or weft-ipam, wherever it runs (executable or agent).

run() picks the handlers for the role, dispatches, and writes weft's log line; the
standalone executables and weftd's socket server both call it, so both paths have
exactly the same semantics.
"""

import json
import time

ROLES = ("weft", "weft-ipam")


def handlers_for(role: str) -> dict:
    if role == "weft":
        from .plugin import HANDLERS
    elif role == "weft-ipam":
        from .ipam.handlers import HANDLERS
    else:
        raise ValueError(f"unknown role {role!r}")
    return HANDLERS


def _log_target(stdin: bytes) -> str:
    from .plugin_config import DEFAULT_LOG_FILE

    try:
        conf = json.loads(stdin)
        return conf.get("logFile", DEFAULT_LOG_FILE) if isinstance(conf, dict) else DEFAULT_LOG_FILE
    except ValueError:
        return DEFAULT_LOG_FILE


def run(role: str, environ, stdin: bytes, via: str = "standalone") -> tuple:
    """(stdout bytes, exit code) for one invocation; weft's own calls are logged."""
    from . import log
    from .spec.dispatch import dispatch

    started = time.monotonic()
    out, code = dispatch(handlers_for(role), environ, stdin)
    command = environ.get("CNI_COMMAND", "")
    if role == "weft" and command != "VERSION":
        entry = {"command": command, "containerID": environ.get("CNI_CONTAINERID", ""),
                 "ifname": environ.get("CNI_IFNAME", ""), "exit": code, "via": via,
                 "ms": round((time.monotonic() - started) * 1000, 1)}
        if code:
            try:
                entry["error"] = json.loads(out)
            except ValueError:
                pass
        log.record(_log_target(stdin), entry)
    return out, code
