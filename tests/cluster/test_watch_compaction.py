"""An agent whose watch falls behind etcd's compaction re-lists and converges.

weftd is frozen (SIGSTOP by PID) while leases change: one is added and rewritten a few
hundred times with a large value (so etcd's send buffers for the frozen watcher fill
and it drops to the store-backed "unsynced" path), one is deleted.  etcd is compacted
at its current revision, so the revisions the watcher still needs are gone.  After
SIGCONT the agent must notice the compaction (etcd answers the watch with
compact_revision), re-list, program the added lease, remove the deleted one, and end
with a kernel that matches etcd exactly, nothing missed or resurrected.
"""

import base64
import json
import signal
import subprocess
import sys

from lab.cluster import REPO, wait_for

# agents lease at most 10.244.200.0/24: the synthetic leases (240 and up) never collide
VXLAN = {"Network": "10.244.0.0/16", "SubnetMax": "10.244.200.0", "Backend": {"Type": "vxlan", "VNI": 1}}
DEVICE = "weft.1"
ROUTE_PROTO = "119"
PREFIX = "/weft/networks/weft/subnets/"
FLOOD_PUTS = 300
PAD = 20_000  # bytes per rewrite: ~6 MB of events behind the frozen agent

# runs inside the underlay (where etcd is); argv: endpoint, JSON list of steps
WRITER = r"""
import json, sys
from cni_plugin.subnet.etcd_transport import EtcdTransport
etcd = EtcdTransport(sys.argv[1])
for step in json.loads(sys.argv[2]):
    op, key = step["op"], step["key"].encode()
    if op == "create":
        lease = etcd.grant(600)
        assert etcd.create_if_absent(key, step["value"].encode(), lease, "create"), key
        print(json.dumps({"key": step["key"], "lease": lease}), flush=True)
    elif op == "rewrite":
        lease = step["lease"]
        for i in range(step["times"]):
            value = json.loads(step["value"]); value["Pad"] = f"{i:06d}" + "x" * step["pad"]
            assert etcd.update_if_lease(key, json.dumps(value).encode(), lease, "rewrite"), key
    elif op == "delete":
        assert etcd.delete(key, "delete") == 1, key
etcd.close()
"""


def ghost(index: int) -> tuple:
    """(key suffix, value) of a synthetic node's lease."""
    value = json.dumps({"PublicIP": f"192.168.100.{200 + index}", "NodeName": f"ghost-{index}",
                        "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": f"0e:00:00:00:00:{index:02x}"}})
    return f"10.244.{240 + index}.0-24", value


def write(cluster, steps) -> list:
    out = subprocess.run(["ip", "netns", "exec", cluster.underlay.name, sys.executable, "-c", WRITER,
                          cluster.etcd.endpoint, json.dumps(steps)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, f"lease writer failed: {out.stderr[-2000:]}"
    return [json.loads(line) for line in out.stdout.splitlines()]


def etcd_peers(cluster, own_subnet: str) -> dict:
    """subnet -> (vtep MAC, public IP) of every lease in etcd but our own."""
    out = cluster.etcd.etcdctl("get", PREFIX, "--prefix", "-w", "json", check=True).stdout
    peers = {}
    for kv in json.loads(out).get("kvs", []):
        key = base64.b64decode(kv["key"]).decode()[len(PREFIX):].replace("-", "/")
        value = json.loads(base64.b64decode(kv["value"]))
        if key != own_subnet:
            peers[key] = (value["BackendData"]["VtepMAC"].lower(), value["PublicIP"])
    return peers


def kernel_peers(node) -> dict:
    """subnet -> (MAC, public IP) as node's kernel has them: route + neighbour + FDB."""
    routes = {r["dst"]: r["gateway"] for r in node.ns.ip_json("route", "show", "proto", ROUTE_PROTO)}
    neigh = {n["dst"]: (n.get("lladdr") or "").lower()
             for n in node.ns.ip_json("-4", "neigh", "show", "dev", DEVICE) if "PERMANENT" in n.get("state", [])}
    out = node.ns.run(["bridge", "-j", "fdb", "show", "dev", DEVICE]).stdout
    fdb = {(e.get("mac") or "").lower(): e.get("dst") for e in (json.loads(out) if out.strip() else [])
           if e.get("dst")}
    peers = {}
    for subnet, gateway in routes.items():
        mac = neigh.get(gateway)
        peers[subnet] = (mac, fdb.get(mac))
    return peers


def current_revision(cluster) -> int:
    out = cluster.etcd.etcdctl("endpoint", "status", "-w", "json", check=True).stdout
    return int(json.loads(out)[0]["Status"]["header"]["revision"])


def test_watch_behind_compaction_relists_and_converges(cluster):
    cluster.set_network("weft", VXLAN)
    node1, node2 = cluster.add_node(), cluster.add_node()
    for node in (node1, node2):
        node.start_agent()
    for node in (node1, node2):
        node.wait_ready()
    doomed_key, doomed_value = ghost(1)
    added_key, added_value = ghost(2)
    [doomed] = write(cluster, [{"op": "create", "key": PREFIX + doomed_key, "value": doomed_value}])
    own = node1.status()["lease"]["subnet"]
    wait_for(lambda: kernel_peers(node1) == etcd_peers(cluster, own), 30,
             what="node1's kernel matching etcd before the freeze")
    assert doomed_key.replace("-", "/") in kernel_peers(node1)

    node1.agent.send_signal(signal.SIGSTOP)
    try:
        [added] = write(cluster, [{"op": "create", "key": PREFIX + added_key, "value": added_value}])
        write(cluster, [{"op": "rewrite", "key": PREFIX + added_key, "value": added_value,
                         "lease": added["lease"], "times": FLOOD_PUTS, "pad": PAD},
                        {"op": "delete", "key": PREFIX + doomed_key}])
        revision = current_revision(cluster)
        cluster.etcd.etcdctl("compact", str(revision), "--physical", check=True)
    finally:
        node1.agent.send_signal(signal.SIGCONT)

    want = etcd_peers(cluster, own)
    assert added_key.replace("-", "/") in want and doomed_key.replace("-", "/") not in want
    wait_for(lambda: kernel_peers(node1) == want, 60,
             what=f"node1's kernel matching etcd after the compaction (log {node1.log_path})")
    # the path taken was the compaction's: etcd said so, the agent re-listed
    wait_for(lambda: f"watch on {PREFIX} fell behind etcd's compaction" in node1.log(), 30,
             what="node1 logging that its watch fell behind the compaction")
    assert "relisting leases" in node1.log()
    # and it stays converged (a later reconcile agrees), with node2 untouched
    assert kernel_peers(node1) == want and node1.status()["ready"]
    wait_for(lambda: kernel_peers(node2) == etcd_peers(cluster, node2.status()["lease"]["subnet"]), 30,
             what="node2's kernel matching etcd")
