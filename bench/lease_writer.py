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
  {"op": "delete", "network": N, "key": K}                  -> {"t0": .., "t1": ..}
  {"op": "bulk", "network": N, "items": [[K, V], ...], "ttl": T}
                        -> {"leases": n, "seconds": ..}   (one etcd lease per item, as each node
                                                          holds its own; 100 puts per txn)
  {"op": "etcd_metrics", "url": U}  -> {"started": {method: n}}  (etcd's grpc_server_started_total)
t0/t1 are time.time() just before and just after the etcd call: the same clock as
the agents' log timestamps.  The connection is made before the first timed call.
"""

import json
import re
import sys
import time
import urllib.request

from cni_plugin.subnet.etcd_registry import EtcdRegistry


STARTED = re.compile(r'^grpc_server_started_total\{([^}]*)\} (\S+)$', re.M)


def etcd_requests(url: str) -> dict:
    """{grpc method: requests started} from one etcd member's /metrics (etcd's own count)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    counts = {}
    for labels, value in STARTED.findall(text):
        method = re.search(r'grpc_method="([^"]*)"', labels)
        if method:
            counts[method.group(1)] = counts.get(method.group(1), 0) + float(value)
    return counts


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
            elif op == "delete":
                t0 = time.time()
                registry.delete_lease_key(request["network"], request["key"])
                answer = {"t0": t0, "t1": time.time()}
            elif op == "bulk":
                t0 = time.monotonic()
                ids = registry.etcd.grant_many(int(request["ttl"]), len(request["items"]))
                prefix = registry.subnets_prefix(request["network"])
                registry.etcd.put_many([((prefix + k).encode(), v.encode(), lease_id)
                                        for (k, v), lease_id in zip(request["items"], ids)], "bulk-write leases")
                answer = {"leases": len(ids), "seconds": time.monotonic() - t0}
            elif op == "etcd_metrics":
                answer = {"started": etcd_requests(request["url"])}
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # report, keep serving
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
