"""Flow records (issue 26): what FlowLog costs new connections, the agent and the disk,
and how fast the IPFIX export goes.

One lab.cluster of two nodes (etcd, a weftd each, VXLAN); server pod S and client C on
node1 (same node), client R on node2 (cross node).  The agents join conntrack's DESTROY
group only, so a TCP connection's record comes when the kernel forgets its entry,
TIME_WAIT after its close: the node namespaces' nf_conntrack_tcp_timeout_time_wait is
set to TIME_WAIT (1 s; their own knob, not the root namespace's), so that the records
of a round come within the run, and the agent's work for them lands in the measured
windows as it would at a steady rate.  Rounds interleave three sides,
the order rotating each round, each starting from a conntrack table without the
benchmark's earlier entries (deleted in the node namespaces before the side is set):
  off  FlowLog unset, and nf_conntrack_acct/timestamp set back to 0 in the nodes
       (a node that never had flow logging);
  on   FlowLog true (the agent turns acct/timestamp on);
  floor  the kernel's share: FlowLog unset, nf_conntrack_acct/timestamp on, and in each
       node a process whose socket joins the agent's conntrack group
       (datapath/conntrack.ConntrackEvents) and never reads (its buffer, a page, full at
       once: the kernel builds every event as for the agent, then drops it; nothing in
       userspace).
Each side runs bench.conn_rate's loop (connect, a byte each way, server closes) C -> S
and R -> S for `preload` seconds unmeasured (the DESTROY events of those connections
then arrive during the measured run, as they would at a steady rate: the kernel's
garbage collection forgets expired entries in bursts seconds apart), then for
`seconds`, measured.  On the "on" side, after the loop, the journals (rotated files
included) must hold one final record per connection made (warm-up included; waited for,
bounded: TIME_WAIT and the garbage collection) and nothing dropped or lost: the
figure counts the connections it finds per client (distinct `id`s whose `start` lies in
the window: a connection of an earlier window may end, and be recorded, in this one)
(`records_missing`), and the agents'
weft_flows_dropped_total / events lost.  Reported: connections/s per side and the
median of the rounds' paired ratios on / off (target >= 0.9); agent CPU per 1,000
connections (node1's agent, on minus off over the same span, preloads included: the
flow work alone;
target <= 50 ms); journal bytes per connection (target <= 500); the floor's rate per
side and its ratio floor / off.

IPFIX: Exporter.export() of `ipfix_connections` journal records in batches of 256 to
nfcapd (Debian's nfdump) on loopback in a namespace of its own; the rate is records per
second of the exporting thread, the collector's own count says whether it kept up.
"""

import json
import os
import re
import subprocess
import sys
import time

from lab.cluster import Cluster, wait_for
from lab.namespaces import stop_process

from .context import cpu_seconds, quiesce, ratio, rotate
from .source_validation import CONN_PORT, REPO, conn_rate, default_netconf
from .throughput import _median

NETWORK = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
ON, OFF, FLOOR = "on", "off", "floor"
SIDES = (ON, OFF, FLOOR)
TOPOLOGIES = ("same_node", "cross_node")
WARMUP = 50  # bench.conn_rate's warm-up connections, recorded too
TIME_WAIT = 1        # seconds: nf_conntrack_tcp_timeout_time_wait in the bench's node namespaces
RECORD_WAIT = 120.0  # seconds the journal may take to hold a side's records (TIME_WAIT, garbage collection)
ACCOUNTING = ("/proc/sys/net/netfilter/nf_conntrack_acct", "/proc/sys/net/netfilter/nf_conntrack_timestamp")
LISTENER = ("import signal, sys\nfrom cni_plugin.datapath import conntrack\n"
            "events = conntrack.ConntrackEvents(buffer=4096)\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); print('ready', flush=True)\n"
            "while True:\n signal.pause()\n")


def _set_side(cluster, nodes, side) -> list:
    """The side's settings applied; the floor's listeners (Popen), started.  The entries
    of the benchmark's earlier connections (those still in TIME_WAIT) are deleted first,
    the agent not yet listening: a side starts from the same table whatever came before
    it (a port reused on an entry left by the side before kills it, and an entry made
    while acct/timestamp were off would be recorded with its DESTROY time as start)."""
    for node in nodes:
        node.ns.run(["conntrack", "-D", "-p", "tcp", "--dport", str(CONN_PORT)], check=False)
    config = dict(NETWORK, FlowLog=True) if side == ON else NETWORK
    cluster.set_network("weft", config)
    readers = []
    for node in nodes:
        wait_for(lambda: bool((node.status() or {}).get("flows")) == (side == ON), 20,
                 what=f"{node.name} flow log {side}")
        if side != ON:
            for path in ACCOUNTING:
                node.ns.run(["sh", "-c", f"echo {1 if side == FLOOR else 0} > {path}"])
        if side == FLOOR:
            reader = subprocess.Popen(["ip", "netns", "exec", node.ns.name, sys.executable, "-c", LISTENER],
                                      stdout=subprocess.PIPE, text=True, cwd=REPO)
            readers.append(reader)
            if reader.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{node.name}: the conntrack event listener of the floor did not start")
    return readers


def _journal(node, flow_dir):
    """Every record of the node's journal, rotated files included (a run writes more
    than --flow-log-max-bytes), and their bytes."""
    from cni_plugin.flows.reader import journal_files

    records, size = [], 0
    for path in journal_files(flow_dir):
        size += os.path.getsize(path)
        with open(path) as handle:
            records += [json.loads(line) for line in handle if line.strip()]
    return records, size


def _epoch(text) -> float:
    from cni_plugin.timestamps import parse_ts

    return parse_ts(text).timestamp()


def _recorded(node, flow_dir, clients, window) -> dict:
    """Client -> how many connections of its window the node's journal holds a final
    record of (distinct `id`s whose `start` lies in the window)."""
    records, _ = _journal(node, flow_dir)
    ids = {name: set() for name in clients}
    for record in records:
        if not record.get("final") or record["dport"] != CONN_PORT:
            continue
        for name, pod in clients.items():
            low, high = window[name]
            if record["src"] == pod.ip and low <= _epoch(record["start"]) <= high:
                ids[name].add(record["id"])
    return {name: len(found) for name, found in ids.items()}


def _records_of(node, flow_dir, clients, window, made) -> dict:
    """_recorded once it holds every connection made, or when RECORD_WAIT is up."""
    deadline = time.monotonic() + RECORD_WAIT
    while True:
        found = _recorded(node, flow_dir, clients, window)
        if all(found[name] >= made[name] for name in clients) or time.monotonic() > deadline:
            return found
        time.sleep(2.0)


def _dropped(node) -> float:
    flows = (node.status() or {}).get("flows") or {}
    return sum((flows.get("dropped") or {}).values()) + (flows.get("eventsLost") or 0)


def ipfix_rate(ctx, connections: int) -> dict:
    from cni_plugin.flows.ipfix import Exporter  # noqa: F401 (imported in the namespace below)

    ns = ctx.namespace("wipfix")
    ns.run(["ip", "link", "set", "lo", "up"])
    store = os.path.join(ctx.work, "nfcapd")
    os.makedirs(store, exist_ok=True)
    collector = subprocess.Popen(["ip", "netns", "exec", ns.name, "nfcapd", "-b", "127.0.0.1", "-p", "4739",
                                  "-w", store, "-t", "3600"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    time.sleep(1.0)
    code = ("import json, sys, time\nfrom cni_plugin.flows.ipfix import Exporter\n"
            "n = int(sys.argv[1]); e = Exporter(('127.0.0.1', 4739), 60)\n"
            "r = {'src': '10.244.1.2', 'dst': '10.244.2.3', 'sport': 0, 'dport': 80, 'proto': 'tcp',"
            " 'start': '2026-12-07T04:00:00.000001Z', 'end': '2026-12-07T04:00:00.5Z',"
            " 'bytes': {'sent': 4000, 'received': 300}, 'packets': {'sent': 6, 'received': 5}}\n"
            "batch = [dict(r, sport=1024 + i % 60000) for i in range(256)]\n"
            "t = time.process_time(); w = time.monotonic(); sent = 0\n"
            "while sent < n:\n e.export(batch); sent += len(batch)\n"
            "print(json.dumps({'connections': sent, 'wall_s': time.monotonic() - w,"
            " 'cpu_s': time.process_time() - t, **e.status()}))\n")
    try:
        out = ns.run([sys.executable, "-c", code, str(connections)], cwd=REPO, timeout=600).stdout
        result = json.loads(out.strip().splitlines()[-1])
        time.sleep(1.0)
    finally:
        stop_process(collector, 10)
    log = collector.stdout.read() if collector.stdout else ""
    got = re.search(r"Flows: (\d+)", log)
    received = int(got.group(1)) if got else None
    records = 2 * result["connections"]
    return {"connections": result["connections"], "records": records,
            "records_per_s": round(records / result["wall_s"]), "cpu_s": round(result["cpu_s"], 2),
            "collector_received": received, "collector_kept_up": received == records,
            "send_failures": result["failed"],
            "limit": "the exporting thread's CPU (Python packing each one-way record, struct per record)"
            if received == records else "the collector or the socket buffer (records lost on loopback)"}


def flows(ctx, seconds: float, rounds: int, ipfix_connections: int, preload: float) -> dict:
    ctx.say(f"flow records: {rounds} rounds of TCP connections/s ({seconds}s each), same and cross node, "
            "FlowLog on vs off, interleaved; then the IPFIX export rate")
    cluster = Cluster(os.path.join(ctx.work, "flows-cluster"), ctx.installed, reconcile_interval=10.0)
    try:
        cluster.set_network("weft", NETWORK)
        nodes = [cluster.add_node() for _ in range(2)]
        dirs = {n.name: os.path.join(n.dir, "flows") for n in nodes}
        for node in nodes:
            node.start_agent(extra=["--flow-log-dir", dirs[node.name]])
        for node in nodes:
            node.wait_ready()
            wait_for(lambda: len(node.status()["peers"]) == 1, 60, what=f"{node.name} peers")
        ctx.record(cluster.namespace_names())
        for node in nodes:
            node.ns.set_tcp_time_wait(TIME_WAIT)
        conf = {n.name: default_netconf(n) for n in nodes}
        pods = {"server": nodes[0].add_pod(conf=conf[nodes[0].name], name="fl-s"),
                "same_node": nodes[0].add_pod(conf=conf[nodes[0].name], name="fl-c"),
                "cross_node": nodes[1].add_pod(conf=conf[nodes[1].name], name="fl-r")}
        ctx.record(cluster.namespace_names())
        samples = {(topo, side): [] for topo in TOPOLOGIES for side in SIDES}
        cpu = {side: [] for side in SIDES}       # node1's agent CPU seconds per 1,000 connections
        missing, lost, per_record, made_on = [], [], [], []
        for r in range(rounds):
            quiesce(ctx)
            for side in rotate(list(SIDES), r):
                readers = _set_side(cluster, nodes, side)
                before = {n.name: _journal(n, dirs[n.name]) for n in nodes}
                dropped_before = sum(_dropped(n) for n in nodes)
                cpu_before = cpu_seconds(nodes[0].agent.pid)
                made, window, preloaded = {}, {}, 0
                for topo in TOPOLOGIES:
                    warm = conn_rate(pods["server"], pods[topo], preload)
                    preloaded += warm["connections"] + warm["errors"] + WARMUP
                    started = time.time()
                    result = conn_rate(pods["server"], pods[topo], seconds)
                    window[topo] = (started, time.time() + 0.5)
                    samples[(topo, side)].append(result)
                    made[topo] = result["connections"] + result["errors"] + WARMUP
                if side == ON:  # a record of every connection made in the window, on the server's node
                    found = _records_of(nodes[0], dirs[nodes[0].name], {t: pods[t] for t in TOPOLOGIES}, window,
                                        made)
                    missing.append({t: made[t] - found[t] for t in TOPOLOGIES})
                    made_on.append(sum(made.values()))
                    lost.append(sum(_dropped(n) for n in nodes) - dropped_before)
                    records, size = _journal(nodes[0], dirs[nodes[0].name])
                    fresh = len(records) - len(before[nodes[0].name][0])
                    if fresh:
                        per_record.append((size - before[nodes[0].name][1]) / fresh)
                spent = cpu_seconds(nodes[0].agent.pid) - cpu_before
                cpu[side].append(spent / (sum(made.values()) + preloaded) * 1000.0)
                for reader in readers:
                    stop_process(reader, 10)
            ctx.say(f"flows round {r + 1}/{rounds}: " + ", ".join(
                f"{topo} {samples[(topo, ON)][-1]['per_s']:.0f}/{samples[(topo, OFF)][-1]['per_s']:.0f}/"
                f"{samples[(topo, FLOOR)][-1]['per_s']:.0f} conn/s"
                for topo in TOPOLOGIES) + f" (on/off/floor), missing {missing[-1]}, lost {lost[-1]}")
        result = {"seconds": seconds, "preload_seconds": preload, "rounds": rounds, "weft_network_config": NETWORK,
                  "node_tcp_time_wait_s": TIME_WAIT,
                  "tool": "bench.conn_rate (Python loop, both ends: connect, 1 byte each way, server closes)",
                  "records_missing": missing, "records_dropped_or_events_lost": lost,
                  "connections_on": made_on,
                  "records_kept": round(1 - (sum(max(0, v) for m in missing for v in m.values()) + sum(lost))
                                        / max(1, sum(made_on)), 4),
                  "journal_bytes_per_record": round(_median(per_record), 1) if per_record else None}
        for topo in TOPOLOGIES:
            values = {side: [s["per_s"] for s in samples[(topo, side)]] for side in SIDES}
            paired = sorted(a / b for a, b in zip(values[ON], values[OFF]) if b)
            floor = sorted(a / b for a, b in zip(values[FLOOR], values[OFF]) if b)
            result[topo] = {**{side: round(_median(values[side]), 1) for side in SIDES},
                            "ratio": round(_median(paired), 3) if paired else None,
                            "floor_ratio": round(_median(floor), 3) if floor else None,
                            "ratio_of_medians": ratio(_median(values[ON]), _median(values[OFF])),
                            **{f"{side}_samples": values[side] for side in SIDES}}
        on_ms, off_ms = _median(cpu[ON]) * 1000.0, _median(cpu[OFF]) * 1000.0
        result["agent_cpu_ms_per_1000"] = {"on": round(on_ms, 1), "off": round(off_ms, 1),
                                           "flow_work": round(on_ms - off_ms, 1)}
    finally:
        ctx.record(cluster.namespace_names())
        cluster.cleanup()
    result["ipfix"] = ipfix_rate(ctx, ipfix_connections)
    return result
