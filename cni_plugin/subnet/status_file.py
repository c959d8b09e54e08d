"""weftd's per-network status file (<run-dir>/<network>.status.json), stdlib only.

The agent rewrites it after every change; `weftctl status` prints it and the plugin's
STATUS answers 51 when it reports a lease conflict.
"""

import json
import os


def path_for(run_dir: str, network: str) -> str:
    return os.path.join(run_dir, f"{network}.status.json")


def beside_subnet_file(subnet_file: str) -> str:
    """/run/weft/<network>.env -> /run/weft/<network>.status.json"""
    base = subnet_file[:-4] if subnet_file.endswith(".env") else subnet_file
    return base + ".status.json"


def write(path: str, status: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(status, handle, indent=2, sort_keys=True)
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)


def read(path: str):
    """The status dict, or None when absent or unreadable."""
    try:
        with open(path) as handle:
            status = json.load(handle)
        return status if isinstance(status, dict) else None
    except (OSError, ValueError):
        return None
