"""One line per invocation in the plugin's log file; never fails the invocation."""

import json
import os
import time


def record(path: str, entry: dict) -> None:
    if not path:
        return
    entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z", **entry}
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (json.dumps(entry, sort_keys=True) + "\n").encode())
        finally:
            os.close(fd)
    except OSError:
        pass  # logging is best effort: a read-only /var/log must not break pod networking
