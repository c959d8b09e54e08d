"""weftd's per-network status file (<run-dir>/<network>.status.json), stdlib only.

The agent rewrites it after every change; `weftctl status` prints it and the plugin's
STATUS answers 51 when it reports a lease conflict.
"""

import json

from ..fsutil import write_atomic


def beside_subnet_file(subnet_file: str) -> str:
    """/run/weft/<network>.env -> /run/weft/<network>.status.json"""
    base = subnet_file[:-4] if subnet_file.endswith(".env") else subnet_file
    return base + ".status.json"


def write(path: str, status: dict) -> None:
    """Atomic, not durable (rewritten after every change), mode 0644."""
    write_atomic(path, json.dumps(status, indent=2, sort_keys=True), mode=0o644, durable=False,
                 make_dirs=True)


def read(path: str):
    """The status dict, or None when absent or unreadable."""
    try:
        with open(path) as handle:
            status = json.load(handle)
        return status if isinstance(status, dict) else None
    except (OSError, ValueError):
        return None
