"""Cross-node convergence on an N-node cluster (default 20), and the agents' RSS.

A lab.cluster with N node namespaces, each running weftd (VXLAN).  For each of a few
synthetic leases (a fake node's subnet, VTEP MAC and underlay address, written by
bench.lease_writer inside the underlay with an etcd lease, as an agent would):
  add     = time from the etcd write to the moment each other node's weftd logs
            "peer programmed" for that key (neighbour + FDB + route done);
  remove  = time from revoking the etcd lease to "peer removed" on each node.
Log timestamps (ms) and the write time both come from this machine's time.time().
After each step the kernel of every node is checked for the entries (or their absence).
"""

import calendar
import json
import os
import secrets
import signal
import subprocess
import sys
import time

from lab.cluster import Cluster, wait_for
from lab.namespaces import sh

from .context import percentile, process_name, quiesce, rss_mib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORK = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
DEVICE = "weft.1"
WAIT_PER_EVENT = 15.0
START_TIMEOUT = 180.0


def parse_ts(text: str) -> float:
    """'2026-11-22T19:03:39.889Z' (UTC) -> seconds since the epoch."""
    seconds = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    fraction = text[19:].rstrip("Z")
    return seconds + (float(fraction) if fraction.startswith(".") else 0.0)


class LogFollower:
    """Reads new lines of one weftd log; remembers (msg, peer key) -> first ts (or another
    field's value in place of the peer key)."""

    def __init__(self, path: str, field: str = "peer"):
        self.path = path
        self.field = field
        self.offset = 0
        self.partial = b""
        self.events = {}

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            peer = entry.get(self.field)
            if peer:
                self.events.setdefault((entry.get("msg", ""), peer.split()[0]), parse_ts(entry["ts"]))

    def seen(self, msg: str, key: str):
        return self.events.get((msg, key))


class Writer:
    """bench.lease_writer inside the underlay namespace, driven over its stdin/stdout."""

    def __init__(self, cluster):
        self.proc = subprocess.Popen(["ip", "netns", "exec", cluster.underlay.name, sys.executable, "-m",
                                      "bench.lease_writer", cluster.etcd.endpoint],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError("bench.lease_writer did not start")

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline() or "{}")
        if "error" in answer or not answer:
            raise RuntimeError(f"lease writer {request.get('op')}: {answer.get('error', 'no answer')}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _kernel_has(node, subnet: str, mac: str, public_ip: str) -> dict:
    vtep = subnet.split("/")[0]
    routes = node.ns.ip_json("route", "show", subnet)
    neigh = node.ns.ip_json("neigh", "show", vtep, "dev", DEVICE)
    fdb_out = sh(["bridge", "-j", "-n", node.ns.name, "fdb", "show", "dev", DEVICE]).stdout
    fdb = json.loads(fdb_out) if fdb_out.strip() else []
    return {"route": any(r.get("dev") == DEVICE for r in routes),
            "neigh": any((n.get("lladdr") or "").lower() == mac for n in neigh),
            "fdb": any((f.get("mac") or "").lower() == mac and f.get("dst") == public_ip for f in fdb)}


def _stop_agents(nodes) -> None:
    """SIGTERM every agent at once (each by its PID), then reap them one by one."""
    for node in nodes:
        if node.agent is not None and node.agent.poll() is None:
            node.agent.send_signal(signal.SIGTERM)
    for node in nodes:
        node.stop_agent()


def teardown(ctx, cluster, writer, nodes) -> None:
    """Close the lease writer, stop the agents, record and remove the cluster."""
    if writer is not None:
        writer.close()
    _stop_agents(nodes)
    ctx.record(cluster.namespace_names())
    cluster.cleanup()


def _stats(values) -> dict:
    return {"n": len(values),
            "p50_ms": round(percentile(values, 50), 1) if values else None,
            "p95_ms": round(percentile(values, 95), 1) if values else None,
            "max_ms": round(max(values), 1) if values else None,
            "min_ms": round(min(values), 1) if values else None}


def convergence(ctx, node_count: int, leases: int) -> dict:
    ctx.say(f"convergence: {node_count}-node cluster, {leases} synthetic leases added and removed")
    cluster = Cluster(os.path.join(ctx.work, "conv-cluster"), ctx.installed, reconcile_interval=10.0)
    writer = None
    nodes = []
    try:
        cluster.set_network("weft", NETWORK)
        for _ in range(node_count):
            nodes.append(cluster.add_node())
        ctx.record(cluster.namespace_names())
        started = time.monotonic()
        for node in nodes:  # all at once: each is its own process
            node.start_agent()
        for node in nodes:
            node.wait_ready(timeout=START_TIMEOUT)
        ready_s = time.monotonic() - started
        for node in nodes:
            wait_for(lambda: len((node.status() or {}).get("peers", [])) == node_count - 1, START_TIMEOUT,
                     interval=0.2, what=f"{node.name} sees {node_count - 1} peers")
        meshed_s = time.monotonic() - started
        ctx.say(f"convergence: {node_count} agents ready in {ready_s:.1f}s, fully meshed in {meshed_s:.1f}s")
        quiesce(ctx)
        writer = Writer(cluster)
        taken = set(writer.ask(op="list", network="weft")["keys"])
        free = [f"10.244.{x}.0-24" for x in range(254, 0, -1) if f"10.244.{x}.0-24" not in taken]
        followers = {node.name: LogFollower(node.log_path) for node in nodes}
        add_ms, remove_ms, per_lease, missing, kernel_bad = [], [], [], 0, []
        for i in range(leases):
            key = free[i]
            subnet = key.replace("-", "/")
            mac = "0e:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
            public_ip = f"192.168.100.{200 + i}"
            value = json.dumps({"PublicIP": public_ip, "NodeName": f"bench-ghost-{i}", "BackendType": "vxlan",
                                "BackendData": {"VNI": 1, "VtepMAC": mac}}, sort_keys=True)
            record = {"key": key}
            for phase, msg in (("add", "peer programmed"), ("remove", "peer removed")):
                if phase == "add":
                    answer = writer.ask(op="create", network="weft", key=key, value=value, ttl=600)
                    lease_id = answer["id"]
                else:
                    answer = writer.ask(op="revoke", id=lease_id)
                written = answer["t0"]

                def all_seen():
                    for follower in followers.values():
                        follower.poll()
                    return all(f.seen(msg, key) is not None for f in followers.values())

                try:
                    wait_for(all_seen, WAIT_PER_EVENT, interval=0.02, what=f"{msg} {key} on every node")
                except TimeoutError:
                    pass
                lat = []
                for name, follower in followers.items():
                    ts = follower.seen(msg, key)
                    if ts is None:
                        missing += 1
                    else:
                        lat.append(max(0.0, (ts - written) * 1000.0))
                (add_ms if phase == "add" else remove_ms).extend(lat)
                want = phase == "add"
                for node in nodes:
                    state = _kernel_has(node, subnet, mac, public_ip)
                    if any(v != want for v in state.values()):
                        kernel_bad.append({"node": node.name, "key": key, "phase": phase, **state})
                record[phase] = {"p50_ms": round(percentile(lat, 50), 1) if lat else None,
                                 "max_ms": round(max(lat), 1) if lat else None, "nodes": len(lat),
                                 "etcd_call_ms": round((answer["t1"] - answer["t0"]) * 1000.0, 1)}
                time.sleep(0.3)
            per_lease.append(record)
            ctx.say(f"convergence lease {i + 1}/{leases}: add p50 {record['add']['p50_ms']} ms "
                    f"max {record['add']['max_ms']} ms; remove p50 {record['remove']['p50_ms']} ms "
                    f"max {record['remove']['max_ms']} ms")
        rss, all_weftd = [], True
        for node in nodes:  # the Popen pid is weftd's: `ip netns exec` execs it
            if node.agent is not None and node.agent.poll() is None:
                argv = process_name(node.agent.pid).split()
                all_weftd &= any(os.path.basename(arg) == "weftd" for arg in argv[:3])
                value = rss_mib(node.agent.pid)
                if value is not None:
                    rss.append(value)
        return {"nodes": node_count, "leases": leases, "agents_ready_s": round(ready_s, 2),
                "fully_meshed_s": round(meshed_s, 2), "add": _stats(add_ms), "remove": _stats(remove_ms),
                "missing": missing, "kernel_mismatches": kernel_bad[:10],
                "kernel_checked": "route via weft.1, permanent neighbour, FDB entry on every node",
                "per_lease": per_lease,
                "agent_rss_mib": {"agents": len(rss), "max": max(rss) if rss else None,
                                  "mean": round(sum(rss) / len(rss), 1) if rss else None,
                                  "pids_are_weftd": all_weftd}}
    finally:
        teardown(ctx, cluster, writer, nodes)

