"""Writes synthetic leases into etcd for the convergence figure (runs inside the underlay).

    ip netns exec <underlay> python -m bench.lease_writer ENDPOINT

One JSON request per stdin line, one JSON answer per stdout line:
  {"op": "list", "network": N}                              -> {"keys": [...]}
  {"op": "create", "network": N, "key": K, "value": V, "ttl": T}
                                                            -> {"id": ID, "t0": .., "t1": ..}
  {"op": "revoke", "id": ID}                                -> {"t0": .., "t1": ..}
  {"op": "put_objects", "items": [[kind, ns, name, json]]}  -> {"revision": R, "t0": .., "t1": ..}
  {"op": "put_history", "network": N, "node": X, "records": [...]} -> {"stored": n}
  {"op": "delete_objects", "items": [[kind, ns, name]]}     -> {"deleted": n}
t0/t1 are time.time() just before and just after the etcd call: the same clock as
the agents' log timestamps.  The connection is made before the first timed call.
"""

import json
import sys
import time

from cni_plugin.subnet.etcd_registry import EtcdRegistry


def main() -> int:
    registry = EtcdRegistry(sys.argv[1].split(","))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "list":
                leases, _ = registry.list_leases(request["network"])
                answer = {"keys": [row[0] for row in leases]}
            elif op == "create":
                t0 = time.time()
                lease_id = registry.create_lease(request["network"], request["key"], request["value"],
                                                 int(request["ttl"]))
                answer = {"id": lease_id, "t0": t0, "t1": time.time()}
            elif op == "revoke":
                t0 = time.time()
                registry.revoke(int(request["id"]))
                answer = {"t0": t0, "t1": time.time()}
            elif op == "put_objects":
                t0 = time.time()
                revision = registry.put_policy_objects([tuple(item) for item in request["items"]])
                answer = {"revision": revision, "t0": t0, "t1": time.time()}
            elif op == "delete_objects":
                answer = {"deleted": registry.delete_policy_objects([tuple(i) for i in request["items"]])}
            elif op == "put_history":
                answer = {"stored": registry.put_history(request["network"], request["node"], request["records"])}
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # report, keep serving
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
