"""Entry point of the `weft` CNI plugin executable."""

import json
import os
import sys
import time


def _log_target(stdin: bytes) -> str:
    from ..plugin_config import DEFAULT_LOG_FILE

    try:
        conf = json.loads(stdin)
        return conf.get("logFile", DEFAULT_LOG_FILE) if isinstance(conf, dict) else DEFAULT_LOG_FILE
    except ValueError:
        return DEFAULT_LOG_FILE


def main() -> None:
    from .. import log
    from ..plugin import HANDLERS
    from ..spec.dispatch import dispatch

    started = time.monotonic()
    stdin = sys.stdin.buffer.read()
    out, code = dispatch(HANDLERS, os.environ, stdin)
    command = os.environ.get("CNI_COMMAND", "")
    if command != "VERSION":
        entry = {"command": command, "containerID": os.environ.get("CNI_CONTAINERID", ""),
                 "ifname": os.environ.get("CNI_IFNAME", ""), "exit": code,
                 "ms": round((time.monotonic() - started) * 1000, 1)}
        if code:
            try:
                entry["error"] = json.loads(out)
            except ValueError:
                pass
        log.record(_log_target(stdin), entry)
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
