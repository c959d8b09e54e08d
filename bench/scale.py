"""Scale: a cluster of N nodes simulated honestly, its cost measured per N.

For each N (default 100, 1,000, 5,000): a lab.cluster (one etcd, underlay namespace)
holds the network 10.0.0.0/8 with SubnetLen 24 (65,536 subnets); bench.lease_writer,
inside the underlay, writes N - agents synthetic leases (valid, distinct subnets from
10.128.0.0 up, distinct VTEP MACs and public IPs, as an agent would write them; each
bound to an etcd lease of its own, as every agent holds one), then `agents` real weftd processes start in their own node
namespaces and each programs the other N - 1 peers (the synthetic ones and each other).

Measured per N, per real agent:
  start      agent start -> every peer programmed (its status file lists N - 1 peers),
             and the kernel then holds N - 1 weft routes;
  quiet      over --scale-quiet seconds with nothing changing: CPU the agent used
             (/proc/<pid>/stat utime+stime) scaled to one reconcile interval, how many
             passes had to read the kernel (weft_reconcile_duration_seconds counts only
             those: a pass with no kernel change notification reads nothing), how
             many kernel entries a pass has to look at, and the etcd requests the
             agents sent (etcd's grpc_server_started_total, all methods) per agent per
             minute;
  churn      --scale-churn lease changes at 20/s (adds of new leases and deletions of
             existing ones, alternating): write -> "peer programmed"/"peer removed" in
             each agent's log (ms timestamps, the same clock), p50/p99/max, from the
             write's start (etcd's commit included) and from etcd's answer; then the
             kernel is checked against etcd's listing, exactly;
  RSS        VmRSS of each weftd after the churn;
  CLI        `weftctl status` (node namespace), `weftctl whois` (a pod's IP, its IPAM
             dir), `weftctl leases` (all N rows) and `weftctl leases --ttl` (all N rows
             with the TTL of each row's etcd lease: one request per lease), median of 3
             runs each.
The cluster's directory (etcd's data included) is on /dev/shm when there is one: the
figure is about the agents, not about fsync on a disk shared with other work.
The same is run for a `wireguard` network (--scale-wireguard-nodes, default 1,000):
synthetic leases carry a PublicKey, each agent programs N - 1 peers into its
wireguard-go and their routes, and the quiet figure includes the peer read every pass
makes (peers send no change notification; agent/read_schedule.py).
The figure also writes <out>/scale.svg: each cost against N.
"""

import base64
import collections
import hashlib
import ipaddress
import json
import os
import subprocess
import tempfile
import time

from lab.cluster import Cluster, wait_for
from lab.namespaces import file_tail

from .context import cpu_seconds, percentile, rss_mib
from .convergence import LogFollower, Writer, teardown

NETWORK = {"Network": "10.0.0.0/8", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}
NETWORKS = {"vxlan": NETWORK, "wireguard": {**NETWORK, "Backend": {"Type": "wireguard"}}}
RECONCILE_INTERVAL = 10.0
CHURN_RATE = 20.0           # changes per second
BULK_CHUNK = 1000           # leases per writer request
START_TIMEOUT = 300.0
SEEN_TIMEOUT = 60.0
ROUTE_PROTO = "119"
GHOST_TTL = 3600
CLI_RUNS = 3
SHM = "/dev/shm"


def ghost(index: int, backend: str = "vxlan") -> tuple:
    """(key suffix, value, subnet) of synthetic node `index` of a `backend` network."""
    subnet = ipaddress.IPv4Network((int(ipaddress.IPv4Address("10.128.0.0")) + index * 256, 24))
    public_ip = ipaddress.IPv4Address(int(ipaddress.IPv4Address("172.16.0.1")) + index)
    if backend == "wireguard":  # a distinct, well-formed public key per node (no private half needed)
        data = {"PublicKey": base64.b64encode(hashlib.sha256(b"scale-ghost-%d" % index).digest()).decode(),
                "ListenPort": 51820}
    else:
        data = {"VNI": 1, "VtepMAC": "0e:" + ":".join(f"{b:02x}" for b in (index + 1).to_bytes(5, "big"))}
    value = json.dumps({"PublicIP": str(public_ip), "NodeName": f"scale-ghost-{index}", "BackendType": backend,
                        "BackendData": data}, sort_keys=True)
    return f"{subnet.network_address}-24", value, str(subnet)


def _metric(body: str, name: str) -> float:
    total = 0.0
    for line in body.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _weft_routes(node) -> set:
    return {r["dst"] for r in node.ns.ip_json("route", "show", "proto", ROUTE_PROTO)}


def _kernel_counts(node) -> dict:
    fdb = subprocess.run(["bridge", "-n", node.ns.name, "fdb", "show"], capture_output=True, text=True).stdout
    return {"routes": len(node.ns.ip_json("route", "show")), "neighbours": len(node.ns.ip_json("neigh", "show")),
            "fdb": len([line for line in fdb.splitlines() if line.strip()])}


def _timed(args, runs=CLI_RUNS) -> dict:
    times, code = [], None
    for _ in range(runs):
        started = time.monotonic()
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        times.append((time.monotonic() - started) * 1000.0)
        code = proc.returncode
    return {"median_ms": round(sorted(times)[len(times) // 2], 1), "runs": runs, "exit": code}


def _etcd_requests(writer, cluster) -> float:
    started = writer.ask(op="etcd_metrics", url=cluster.etcd.endpoint.split(",")[0] + "/metrics")["started"]
    return sum(started.values()), started


def one_size(ctx, n: int, agents: int, churn: int, quiet: float, backend: str = "vxlan") -> dict:
    ctx.say(f"scale N={n} ({backend}): {n - agents} synthetic leases, {agents} real agents")
    # on tmpfs when there is one: etcd fsyncs every write, and on a disk shared with other
    # work that alone took ~150 ms per write here; the figure is about the agents
    base = SHM if os.path.isdir(SHM) and os.access(SHM, os.W_OK) else ctx.work
    workdir = tempfile.mkdtemp(prefix=f"weft-scale-{n}-", dir=base)
    cluster = Cluster(workdir, ctx.installed, reconcile_interval=RECONCILE_INTERVAL)
    writer, nodes = None, []
    try:
        cluster.set_network("weft", NETWORKS[backend])
        nodes = [cluster.add_node() for _ in range(agents)]
        ctx.record(cluster.namespace_names())
        writer = Writer(cluster)
        ghosts = [ghost(i, backend) for i in range(n - agents)]
        wrote = 0.0
        for start in range(0, len(ghosts), BULK_CHUNK):
            items = [[key, value] for key, value, _ in ghosts[start:start + BULK_CHUNK]]
            wrote += writer.ask(op="bulk", network="weft", items=items, ttl=GHOST_TTL)["seconds"]
        # -- start -> every peer programmed
        started = time.monotonic()
        for node in nodes:
            node.start_agent()
        start_s = []
        for node in nodes:
            wait_for(lambda: len((node.status() or {}).get("peers") or []) == n - 1, START_TIMEOUT, interval=0.05,
                     what=f"{node.name} programs {n - 1} peers (log {node.log_path})")
            start_s.append(time.monotonic() - started)
        for node in nodes:
            routes = _weft_routes(node)
            if len(routes) != n - 1:
                status = node.status() or {}
                raise RuntimeError(f"{node.name}: {len(routes)} weft routes in the kernel, expected {n - 1} "
                                   f"(status: ready {status.get('ready')}, problem {status.get('problem')}, "
                                   f"{len(status.get('peers') or [])} peers); log tail:\n"
                                   f"{file_tail(node.log_path, 15)}")
        ctx.say(f"scale N={n}: all peers programmed {max(start_s):.2f}s after start")
        pod = nodes[0].add_pod()
        # -- quiet cluster: CPU per reconcile interval, etcd requests; from the first
        # periodic pass on (the listing's own reconcile is the start-up figure's)
        for node in nodes:
            wait_for(lambda: _metric(node.http("/metrics")[1], "weft_reconcile_duration_seconds_count") >= 2,
                     RECONCILE_INTERVAL * 3 + 30, interval=0.5, what=f"{node.name}'s first periodic reconcile")
        time.sleep(2.0)
        # the scrapes stay outside the CPU window: rendering /metrics is the bench's
        # cost, not the quiet agent's
        before_metrics = [node.http("/metrics")[1] for node in nodes]
        before_cpu = [cpu_seconds(node.agent.pid) for node in nodes]
        before_etcd, _ = _etcd_requests(writer, cluster)
        time.sleep(quiet)
        after_etcd, methods = _etcd_requests(writer, cluster)
        after_cpu = [cpu_seconds(node.agent.pid) for node in nodes]
        after_metrics = [node.http("/metrics")[1] for node in nodes]
        cpu_ms = [(a - b) * 1000.0 * RECONCILE_INTERVAL / quiet for a, b in zip(after_cpu, before_cpu)]
        passes, wall = [], []
        for b, a in zip(before_metrics, after_metrics):
            count = _metric(a, "weft_reconcile_duration_seconds_count") - _metric(b, "weft_reconcile_duration_seconds_count")
            total = _metric(a, "weft_reconcile_duration_seconds_sum") - _metric(b, "weft_reconcile_duration_seconds_sum")
            passes.append(count)
            wall.append(total / count * 1000.0 if count else None)
        etcd_per_agent_min = (after_etcd - before_etcd) / agents / (quiet / 60.0)
        kernel = _kernel_counts(nodes[0])
        # -- churn: adds and removes at CHURN_RATE
        followers = {}
        for node in nodes:
            follower = LogFollower(node.log_path)
            follower.offset = os.path.getsize(node.log_path)
            followers[node.name] = follower
        changes = []
        removable = collections.deque(key for key, _, _ in ghosts)  # oldest first; adds join the end
        churn_started = time.monotonic()
        for i in range(churn):
            due = churn_started + i / CHURN_RATE
            time.sleep(max(0.0, due - time.monotonic()))
            if i % 2 == 0:
                key, value, _ = ghost(n + i, backend)
                answer = writer.ask(op="create", network="weft", key=key, value=value, ttl=GHOST_TTL)
                changes.append((key, "peer programmed", answer["t0"], answer["t1"]))
                removable.append(key)
            else:
                key = removable.popleft()
                answer = writer.ask(op="delete", network="weft", key=key)
                changes.append((key, "peer removed", answer["t0"], answer["t1"]))

        def all_seen():
            for follower in followers.values():
                follower.poll()
            return all(f.seen(msg, key) is not None for f in followers.values() for key, msg, *_ in changes)

        try:
            wait_for(all_seen, SEEN_TIMEOUT, interval=0.1, what="every churn change in every agent's log")
        except TimeoutError:
            pass
        # from the write's start (etcd's commit included) and from etcd's answer (the agent's
        # share: the watch event leaves etcd at the commit, at most this much earlier)
        latencies, after_ack, write_ms, missing = [], [], [], 0
        by_kind = {"peer programmed": [], "peer removed": []}
        for key, msg, t0, t1 in changes:
            write_ms.append((t1 - t0) * 1000.0)
            for follower in followers.values():
                ts = follower.seen(msg, key)
                if ts is None:
                    missing += 1
                else:
                    latencies.append(max(0.0, (ts - t0) * 1000.0))
                    after_ack.append(max(0.0, (ts - t1) * 1000.0))
                    by_kind[msg].append(latencies[-1])
        # the kernel matches etcd exactly afterwards
        listed = set(writer.ask(op="list", network="weft")["keys"])
        mismatches = {}
        for node in nodes:
            own = (node.status() or {}).get("lease", {}).get("subnet")
            want = {k.replace("-", "/") for k in listed} - {own}
            try:
                wait_for(lambda: _weft_routes(node) == want, 30, interval=0.2, what=f"{node.name} matches etcd")
            except TimeoutError:
                got = _weft_routes(node)
                mismatches[node.name] = {"missing": len(want - got), "extra": len(got - want)}
        rss = [rss_mib(node.agent.pid) for node in nodes]
        # -- the CLI
        exe = os.path.join(ctx.installed, "bin", "weftctl")
        node1 = nodes[0]
        status_ms = _timed(["ip", "netns", "exec", node1.ns.name, exe, "status", "--run-dir", node1.run_dir])
        whois_ms = _timed(["ip", "netns", "exec", node1.ns.name, exe, "whois", pod.ip, "--data-dir", node1.ipam_dir])
        leases = ["ip", "netns", "exec", cluster.underlay.name, exe, "leases", "weft",
                  "--etcd-endpoints", cluster.etcd.endpoint]
        leases_ms = _timed(leases)
        leases_ttl_ms = _timed(leases + ["--ttl"])
        point = {
            "n": n, "backend": backend, "agents": agents, "bulk_write_s": round(wrote, 2),
            "start_to_programmed_s": {"max": round(max(start_s), 2), "each": [round(s, 2) for s in start_s]},
            "churn": {"changes": churn, "rate_per_s": CHURN_RATE, "samples": len(latencies), "missing": missing,
                      "p50_ms": _round(percentile(latencies, 50)), "p99_ms": _round(percentile(latencies, 99)),
                      "max_ms": _round(max(latencies) if latencies else None),
                      "after_etcd_ack_p50_ms": _round(percentile(after_ack, 50)),
                      "after_etcd_ack_p99_ms": _round(percentile(after_ack, 99)),
                      "etcd_write_p50_ms": _round(percentile(write_ms, 50)),
                      "adds_p99_ms": _round(percentile(by_kind["peer programmed"], 99)),
                      "removals_p99_ms": _round(percentile(by_kind["peer removed"], 99)),
                      "slowest_ms": [_round(x) for x in sorted(latencies)[-8:]],
                      "achieved_rate_per_s": _round(churn / max(time.monotonic() - churn_started, 1e-6), 1)},
            "kernel_matches_etcd": not mismatches, "kernel_mismatches": mismatches,
            "quiet": {"seconds": quiet, "cpu_ms_per_interval": {"max": _round(max(cpu_ms)),
                                                               "each": [_round(c) for c in cpu_ms]},
                      "reconcile_passes": passes, "reconcile_wall_ms": [_round(w) for w in wall],
                      "kernel_entries_on_node1": kernel,
                      "etcd_requests_per_agent_per_min": _round(etcd_per_agent_min, 2),
                      "etcd_methods_total": {k: int(v) for k, v in sorted(methods.items()) if v}},
            "rss_mib": {"max": max(r for r in rss if r is not None), "each": rss},
            "weftctl_ms": {"status": status_ms, "whois": whois_ms, "leases": leases_ms,
                           "leases_ttl": leases_ttl_ms},
        }
        ctx.say(f"scale N={n} ({backend}): churn p50 {point['churn']['p50_ms']} ms p99 {point['churn']['p99_ms']} ms, "
                f"quiet CPU {point['quiet']['cpu_ms_per_interval']['max']} ms/interval, RSS {point['rss_mib']['max']} "
                f"MiB, etcd {point['quiet']['etcd_requests_per_agent_per_min']} req/agent/min, "
                f"weftctl leases {leases_ms['median_ms']} ms, with --ttl {leases_ttl_ms['median_ms']} ms")
        return point
    finally:
        teardown(ctx, cluster, writer, nodes)


def _round(value, digits=1):
    return None if value is None else round(value, digits)


def scale(ctx, sizes, agents: int, churn: int, quiet: float, out_dir: str, wireguard_sizes=()) -> dict:
    from .scale_plot import plot

    points = [one_size(ctx, n, agents, churn, quiet) for n in sizes]
    figure = {"sizes": list(sizes), "agents": agents, "reconcile_interval_s": RECONCILE_INTERVAL,
              "network": NETWORK["Network"], "points": points,
              # peers are read on every pass: the quiet figure of a wireguard network
              "wireguard": [one_size(ctx, n, agents, churn, quiet, "wireguard") for n in wireguard_sizes]}
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "scale.svg")
    with open(path, "w") as handle:
        handle.write(plot(figure))
    figure["plot"] = path
    return figure

