"""Source validation (issue 22): what checking every frame a pod sends costs its traffic.

One lab.cluster (etcd, a weftd per node, VXLAN, the network config's defaults) of four
nodes, pods attached by the installed `weft` launcher through the agent with the weft
entry of conf/10-weft.conflist (the default netconf, paths moved under the run):
  on   nodes 1 and 2, the default netconf: validation on (the `bridge weft_source_<net>` table);
  off  nodes 3 and 4, the same netconf plus `"allowSpoofing": true`, as a network whose
       conflist turns it off: those nodes hold no validated pod.
Per side: server pod S and client C on the first node (same node, over the bridge),
client R on the second (cross node, over VXLAN).  Measured per side and topology:
  - new TCP connections per second: bench.conn_rate's loop in the client against its
    server in S (the same Python loop on both sides), for `seconds`;
  - pod-to-pod throughput: iperf3 -t `seconds`, one TCP stream (bench.throughput.iperf);
  - ADD and DEL through the agent on each side's first node (information, no target).
Rounds interleave the two sides measurement by measurement, the order rotating each
round (on/off, off/on, ...), so a busy machine weighs on both alike.  Reported: the
median of the rounds per side, and as the ratio (target >= 0.97) the median of the
rounds' paired ratios on / off: each pair ran back to back, so a burst of other work
that hits one round does not move it the way it moves a ratio of medians (kept too, as
ratio_of_medians).  The nftables tables of each side's nodes
and the elements of their source sets are recorded, so the JSON shows that "on" really
validated its pods and "off" did not (validation_active: the side's sets hold elements;
the agent may keep the table, with its hook, on the "off" nodes too: that is part of
what `allowSpoofing` costs, and measured as such).
"""

import json
import os
import subprocess
import sys
import time

from lab.cluster import Cluster, wait_for
from lab.namespaces import Namespace, stop_process

from .context import cpu_seconds, quiesce, ratio, rotate, summary
from .throughput import _median, iperf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFLIST = os.path.join(REPO, "conf", "10-weft.conflist")
NETWORK = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
ON, OFF = "on", "off"
SIDES = (ON, OFF)
LABELS = {ON: "validation on (default netconf)", OFF: "validation off (`allowSpoofing: true`)"}
TOPOLOGIES = ("same_node", "cross_node")
CONN_PORT = 8081
SOURCE_TABLE_PREFIX = "weft_source_"
TARGET = 0.97


def default_netconf(node, **extra) -> dict:
    """The weft entry of conf/10-weft.conflist as a runtime hands it to the plugin, with
    only its paths moved under this node's directories."""
    with open(CONFLIST) as handle:
        conflist = json.load(handle)
    entry = conflist["plugins"][0]
    conf = {**entry, "cniVersion": conflist["cniVersion"], "name": conflist["name"],
            "subnetFile": node.subnet_file(conflist["name"]),
            "agentSocket": os.path.join(node.run_dir, "weftd.sock"),
            "dataDir": os.path.join(node.dir, "weft"), "logFile": os.path.join(node.dir, "weft.log"),
            "ipam": {**entry["ipam"], "dataDir": node.ipam_dir}}
    conf.update(extra)
    return conf


def _nft_tables(node) -> list:
    """"family name" of every nftables table in a node namespace."""
    proc = node.ns.run(["nft", "-j", "list", "tables"], check=False)
    try:
        items = json.loads(proc.stdout or "{}").get("nftables", [])
    except ValueError:
        return []
    return sorted(f"{i['table']['family']} {i['table']['name']}" for i in items if "table" in i)


def _source_elements(node) -> int:
    """Elements in the sets of the node's source-validation tables (0 when none)."""
    count = 0
    for table in _nft_tables(node):
        family, name = table.split(" ", 1)
        if not name.startswith(SOURCE_TABLE_PREFIX):
            continue
        proc = node.ns.run(["nft", "-j", "list", "table", family, name], check=False)
        try:
            items = json.loads(proc.stdout or "{}").get("nftables", [])
        except ValueError:
            continue
        for item in items:
            for kind in ("set", "map"):
                if kind in item:
                    count += len(item[kind].get("elem") or [])
    return count


def _dropped(node) -> int:
    """Packets the node's source tables dropped (their `spoofed` counters; 0 when none)."""
    count = 0
    for table in _nft_tables(node):
        family, name = table.split(" ", 1)
        if name.startswith(SOURCE_TABLE_PREFIX):
            proc = node.ns.run(["nft", "-j", "list", "counters", "table", family, name], check=False)
            try:
                items = json.loads(proc.stdout or "{}").get("nftables", [])
            except ValueError:
                continue
            count += sum(int(i["counter"].get("packets", 0)) for i in items if "counter" in i)
    return count


def conn_rate(server, client, seconds: float) -> dict:
    """bench.conn_rate: client -> server for `seconds`; the server stopped by its PID."""
    proc = subprocess.Popen(["ip", "netns", "exec", server.ns.name, sys.executable, "-m", "bench.conn_rate",
                             "serve", server.ip, str(CONN_PORT), str(seconds + 60)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        if proc.stdout.readline().strip() != "listening":
            raise RuntimeError(f"conn_rate server in {server.ns.name}: {proc.stderr.read()[:300]}")
        out = client.ns.run([sys.executable, "-m", "bench.conn_rate", "connect", server.ip, str(CONN_PORT),
                             str(seconds)], timeout=seconds + 60, cwd=REPO).stdout
        result = json.loads(out.strip().splitlines()[-1])
        if not result["connections"]:
            raise RuntimeError(f"conn_rate {client.ns.name} -> {server.ip}: no connection ({result})")
        return result
    finally:
        stop_process(proc, 5)


def _add_del(node, conf, count: int, record) -> tuple:
    """(ADD ms, DEL ms) lists of `count` pods attached and removed through the agent;
    each timed around the plugin's exec only (the pod namespace is made before)."""
    adds, dels = [], []
    for _ in range(count):
        ns = Namespace(f"wsv{node.index}")
        record([ns.name])
        try:
            started = time.perf_counter()
            pod = node.add_pod(ns=ns, conf=conf)
            adds.append((time.perf_counter() - started) * 1000.0)
            started = time.perf_counter()
            out = node.delete_pod(pod, conf=conf)
            dels.append((time.perf_counter() - started) * 1000.0)
            node.pods.remove(pod)
            if out.code != 0:
                raise RuntimeError(f"DEL on {node.name} failed: {out}")
        finally:
            ns.delete()
    return adds, dels


def source_validation(ctx, seconds: float, rounds: int, adds_per_round: int) -> dict:
    ctx.say(f"source validation: {rounds} rounds of TCP connections/s and iperf3 ({seconds}s each), "
            "same-node and cross-node, on vs off, interleaved")
    cluster = Cluster(os.path.join(ctx.work, "sv-cluster"), ctx.installed, reconcile_interval=10.0)
    try:
        nodes = cluster.start_nodes(4, NETWORK, mesh_timeout=60)
        ctx.record(cluster.namespace_names())
        side_nodes = {ON: nodes[0:2], OFF: nodes[2:4]}
        confs = {side: [default_netconf(n, **({"allowSpoofing": True} if side == OFF else {}))
                        for n in side_nodes[side]] for side in SIDES}
        pods = {}
        for side in SIDES:
            first, second = side_nodes[side]
            pods[side] = {"server": first.add_pod(conf=confs[side][0], name=f"sv-{side}-s"),
                          "same_node": first.add_pod(conf=confs[side][0], name=f"sv-{side}-c"),
                          "cross_node": second.add_pod(conf=confs[side][1], name=f"sv-{side}-r")}
        ctx.record(cluster.namespace_names())
        for side in SIDES:  # reachability before timing anything
            for topo in TOPOLOGIES:
                if not pods[side][topo].ping(pods[side]["server"].ip):
                    raise RuntimeError(f"{side} {topo}: {pods[side][topo].ns.name} cannot reach "
                                       f"{pods[side]['server'].ip}")
        tables = {side: {n.name: _nft_tables(n) for n in side_nodes[side]} for side in SIDES}
        elements = {side: {n.name: _source_elements(n) for n in side_nodes[side]} for side in SIDES}
        samples = {(kind, topo, side): [] for kind in ("conn", "tcp") for topo in TOPOLOGIES for side in SIDES}
        add_ms, del_ms = {side: [] for side in SIDES}, {side: [] for side in SIDES}
        dropped = {n.name: _dropped(n) for n in nodes}
        cpu = {n.name: cpu_seconds(n.agent.pid) for n in nodes}
        for r in range(rounds):
            quiesce(ctx)
            order = rotate(list(SIDES), r)
            for topo in TOPOLOGIES:
                for side in order:
                    samples[("conn", topo, side)].append(
                        conn_rate(pods[side]["server"], pods[side][topo], seconds))
                for side in order:
                    samples[("tcp", topo, side)].append(
                        iperf(pods[side]["server"].ns.name, pods[side]["server"].ip, pods[side][topo].ns.name,
                              max(1, int(round(seconds)))))
            for side in order:
                adds, dels = _add_del(side_nodes[side][0], confs[side][0], adds_per_round, ctx.record)
                add_ms[side] += adds
                del_ms[side] += dels
            ctx.say(f"source validation round {r + 1}/{rounds}: " + ", ".join(
                f"{topo} {samples[('conn', topo, ON)][-1]['per_s']:.0f}/{samples[('conn', topo, OFF)][-1]['per_s']:.0f}"
                f" conn/s, {samples[('tcp', topo, ON)][-1]['bps'] / 1e9:.2f}/"
                f"{samples[('tcp', topo, OFF)][-1]['bps'] / 1e9:.2f} Gbit/s" for topo in TOPOLOGIES) + " (on/off)")
        result = {"seconds": seconds, "rounds": rounds, "labels": LABELS, "target": TARGET,
                  "tool": {"connections": "bench.conn_rate (Python loop, both ends: connect, 1 byte each way, "
                                          "server closes)", "throughput": "iperf3 -c IP -t S -J (1 TCP stream)"},
                  "weft_network_config": NETWORK, "netconf": {side: confs[side][0] for side in SIDES},
                  "nft_tables": tables, "source_set_elements": elements,
                  "source_table_present": {side: any(t.split(" ", 1)[1].startswith(SOURCE_TABLE_PREFIX)
                                                     for ts in tables[side].values() for t in ts) for side in SIDES},
                  "validation_active": {side: any(elements[side].values()) for side in SIDES},
                  # frames the source tables dropped during the rounds (none expected: pods send as themselves)
                  "dropped_during_rounds": {side: {n.name: _dropped(n) - dropped[n.name] for n in side_nodes[side]}
                                            for side in SIDES},
                  # each agent's CPU over the rounds: what validation costs outside the datapath
                  "agent_cpu_s_during_rounds": {side: {n.name: round(cpu_seconds(n.agent.pid) - cpu[n.name], 2)
                                                       for n in side_nodes[side]} for side in SIDES}}
        for topo in TOPOLOGIES:
            entry = {}
            for kind, key, scale in (("conn", "per_s", 1.0), ("tcp", "bps", 1e9)):
                values = {side: [s[key] / scale for s in samples[(kind, topo, side)]] for side in SIDES}
                paired = sorted(a / b for a, b in zip(values[ON], values[OFF]) if b)
                name = "connections_per_s" if kind == "conn" else "gbps"
                entry[name] = {**{side: round(_median(values[side]), 3) for side in SIDES},
                               "ratio": round(_median(paired), 3) if paired else None,
                               "ratio_of_medians": ratio(_median(values[ON]), _median(values[OFF])),
                               **{f"{side}_samples": [round(v, 3) for v in values[side]] for side in SIDES}}
            entry["connection_errors"] = {side: sum(s["errors"] for s in samples[("conn", topo, side)])
                                          for side in SIDES}
            entry["retransmits"] = {side: [s["retransmits"] for s in samples[("tcp", topo, side)]] for side in SIDES}
            result[topo] = entry
        result["add_del"] = {"per_round": adds_per_round,
                             **{side: {"add_ms": summary(add_ms[side]), "del_ms": summary(del_ms[side])}
                                for side in SIDES},
                             "add_p50_ratio": ratio(summary(add_ms[ON])["p50"], summary(add_ms[OFF])["p50"]),
                             "del_p50_ratio": ratio(summary(del_ms[ON])["p50"], summary(del_ms[OFF])["p50"])}
        return result
    finally:
        ctx.record(cluster.namespace_names())
        cluster.cleanup()
