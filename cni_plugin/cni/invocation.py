"""One CNI invocation of weft or weft-ipam, wherever it runs (executable or agent).

run() dispatches and writes the plugin's log line; the standalone executables and
weftd's socket server both reach it through roles.invoke, so both paths have exactly
the same semantics.
"""

import json
import time


def _log_target(stdin: bytes, default: str) -> str:
    try:
        conf = json.loads(stdin)
    except (ValueError, RecursionError):
        return default
    target = conf.get("logFile", default) if isinstance(conf, dict) else default
    # a relative logFile is refused by the handler (code 7); never write beside the cwd
    return target if isinstance(target, str) and target.startswith("/") else default


def run(handlers: dict, environ, stdin: bytes, via: str = "standalone", log_file: str = None) -> tuple:
    """(stdout bytes, exit code) for one invocation.  log_file: the log's default path
    (netconf `logFile` overrides it); None: the call is not logged."""
    from . import log
    from .dispatch import dispatch

    started = time.monotonic()
    out, code = dispatch(handlers, environ, stdin)
    command = environ.get("CNI_COMMAND", "")
    if log_file is not None and command != "VERSION":
        entry = {"command": command, "containerID": environ.get("CNI_CONTAINERID", ""),
                 "ifname": environ.get("CNI_IFNAME", ""), "exit": code, "via": via,
                 "ms": round((time.monotonic() - started) * 1000, 1)}
        if code:
            try:
                entry["error"] = json.loads(out)
            except ValueError:
                pass
        log.record(_log_target(stdin, log_file), entry)
    return out, code
