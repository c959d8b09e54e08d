"""The node's denial journal: one JSON line per refused flow, per network.

`<state dir>/<network>/policy-denials.jsonl`, moved to `.1` past 8 MiB.  Three kinds
of record share it (field `kind`; records without one are NetworkPolicy denials,
as weft wrote them before the guards existed):
  policy         a NetworkPolicy isolated the destination or the source (controllers/policy.py)
  spoofed        a pod sent as someone else: another address or MAC (controllers/source_guard.py)
  control-plane  a pod knocked on etcd or on weftd's own ports (controllers/control_guard.py)
Every record names the pod(s) as they were when it was written, so the journal stands
alone after the pods are gone.  `weftctl policy denials` reads it.
"""

import json
import os
import threading

DENIALS_FILE = "policy-denials.jsonl"
MAX_BYTES = 8 << 20  # then the journal moves to .1 and starts again
_lock = threading.Lock()  # the policy thread and the network loop both append


def path(state_dir: str, network: str) -> str:
    return os.path.join(state_dir, network, DENIALS_FILE)


def append(state_dir: str, network: str, records: list) -> None:
    """Append records (dicts) as JSON lines; OSError when the journal cannot be written."""
    if not records:
        return
    where = path(state_dir, network)
    with _lock:
        os.makedirs(os.path.dirname(where), exist_ok=True)
        if os.path.exists(where) and os.path.getsize(where) > MAX_BYTES:
            os.replace(where, where + ".1")
        with open(where, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
