"""RunPodSandbox latency through containerd's CRI: weft vs the reference chain, on
containerd 1.6 and 2.1 in the same run.

One weft cluster (real etcd) with two nodes, each running a private containerd
(lab.cri_node): Debian 12's 1.6 beside its CNI plugins 1.1.1, conflists at
cniVersion 1.0.0; and 2.1.9 beside plugins 1.9.1, conflists at 1.1.0 (what each
release's libcni reads: lab.containerd.release).  Three runtime handlers on each:
  ""       conf/10-weft.conflist as shipped: weft through the node's weftd (which
           holds the lease), then portmap; IPMasq from the subnet file (true by
           default: the agent's node-wide masquerade table);
  sa       weft standalone, as on a node without the agent: the same chain with its
           agentSocket naming a socket nobody listens on, static ranges (its own /24,
           bridge and network name), so every call runs weft's handlers in the
           exec'd process; no masquerade (no subnet file says so);
  ref      bridge + host-local + portmap of the release's reference plugins, no
           masquerade.
Each sandbox is timed around the RunPodSandbox gRPC call (CRI client in this
process), then stopped (timed too) and removed.  One unmeasured sandbox per handler
and release warms up; then, round by round, both containerds and their handlers take
turns, the orders rotating each round.

Where weft's time goes: weft's log gives the milliseconds each ADD spent inside its
handlers (in the agent, or in the standalone process); `exec_ms` is one VERSION call
of `weft` (through the agent socket, and standalone) and of the release's Go
`bridge`, run where containerd runs them: the per-exec cost each plugin pays before
doing any work.
"""

import json
import os
import subprocess
import time

from lab import runtimes
from lab.cluster import Cluster
from lab.containerd import RELEASES, release, tool_versions
from lab.cri_node import CriNode, copy_conflist

from .context import percentile, ratio, rotate, summary

NETWORK = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
HANDLERS = {"weft": "", "weft_standalone": "sa", "reference": "ref"}
WEFT_LABELS = ("weft", "weft_standalone")
NOBODY = "nobody-listens.sock"


def standalone_conflist(made) -> dict:
    """The node's weft conflist run without an agent: static ranges, its own bridge."""
    node = made.node
    return copy_conflist(made.conflists[""], "weftsa", bridge="cbrsa", agentSocket=os.path.join(node.dir, NOBODY),
                         subnetFile=os.path.join(node.dir, "weftsa-no-lease.env"),
                         ipam={"type": "weft-ipam", "dataDir": node.ipam_dir,
                               "ranges": [[{"subnet": f"10.98.{node.index}.0/24"}]]})


def plugins_version(which) -> str:
    """The reference plugins' package version beside a release (1.1.1, 1.9.1)."""
    if which.plugins_dir == runtimes.CNI_PLUGINS_19:
        version = runtimes.versions().get("cni-plugins", ("?",))[0]
    else:
        version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"],
                                 capture_output=True, text=True).stdout
    return version.split("+")[0].split("-")[0] or "?"


def _timed(call):
    started = time.perf_counter()
    value = call()
    return value, (time.perf_counter() - started) * 1000.0


def _one(node, handler: str, name: str) -> tuple:
    client = node.client
    sandbox_id, run_ms = _timed(lambda: client.run_pod_sandbox(node.runtime.sandbox_config(name), handler))
    _, stop_ms = _timed(lambda: client.stop_pod_sandbox(sandbox_id))
    _, remove_ms = _timed(lambda: client.remove_pod_sandbox(sandbox_id))
    return sandbox_id, run_ms, stop_ms, stop_ms + remove_ms


def _exec_ms(node, plugin: str, socket: str, rounds: int = 20) -> float:
    """p50 of one VERSION call of `plugin` where containerd runs it (weft: through the
    agent named by `socket` when one listens there, as its ADDs go)."""
    stdin = json.dumps({"cniVersion": "1.0.0", "name": "weft", "type": plugin, "agentSocket": socket})
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        node.runtime.in_node([os.path.join(node.runtime.bin_dir, plugin)], input_text=stdin,
                             env={"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "")})
        samples.append((time.perf_counter() - started) * 1000.0)
    return round(percentile(samples, 50), 2)


def _weft_log_ms(node) -> dict:
    """{(command, container ID): (ms inside weft's handlers, how it was served: "agent" or
    "standalone")} from the node's weft log (both weft handlers log there;
    RemovePodSandbox runs a second DEL, which finds nothing left to do)."""
    out = {}
    try:
        with open(os.path.join(node.node.dir, "weft.log")) as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if "ms" in record and not record.get("error"):  # the first DEL is StopPodSandbox's
                    out.setdefault((record.get("command"), record.get("containerID")),
                                   (record["ms"], record.get("via")))
    except OSError:
        pass
    return out


def _phase(nodes: dict, rounds: int, tag: str) -> dict:
    """`rounds` sandboxes per handler on each release, interleaved; per release and
    handler the latencies and (weft) the time inside its handlers, plus the ratios."""
    samples = {name: {label: {"run": [], "stop": [], "stop_remove": [], "ids": []} for label in HANDLERS}
               for name in nodes}
    for index in range(rounds):
        for name in rotate(list(nodes), index):
            for label, handler in rotate(list(HANDLERS.items()), index):
                sandbox_id, run_ms, stop_ms, stop_remove_ms = _one(nodes[name], handler, f"{tag}{index}-{label}")
                entry = samples[name][label]
                entry["ids"].append(sandbox_id)
                entry["run"].append(run_ms)
                entry["stop"].append(stop_ms)
                entry["stop_remove"].append(stop_remove_ms)
    out = {}
    for name, node in nodes.items():
        phase = {label: {"run_ms": summary(s["run"]), "stop_ms": summary(s["stop"]),
                         "stop_remove_ms": summary(s["stop_remove"])}
                 for label, s in samples[name].items()}
        logged = _weft_log_ms(node)
        for label in WEFT_LABELS:
            ids = samples[name][label]["ids"]
            for command, key in (("ADD", "add_in_handlers_ms"), ("DEL", "del_in_handlers_ms")):
                phase[label][key] = summary(logged[(command, i)][0] for i in ids if (command, i) in logged)
            phase[label]["via"] = sorted({logged[("ADD", i)][1] for i in ids if ("ADD", i) in logged})
        for label, prefix in (("weft", ""), ("weft_standalone", "standalone_")):
            for key in ("run", "stop", "stop_remove"):
                phase[f"{prefix}{key}_p50_ratio"] = ratio(phase[label][f"{key}_ms"]["p50"],
                                                          phase["reference"][f"{key}_ms"]["p50"])
        out[name] = phase
    return out


def cri(ctx, rounds: int) -> dict:
    """Two phases: empty nodes (each ADD also creates what the first pod needs: for
    weft with masquerade the nftables table, which the DEL of the last pod removes),
    then nodes where one sandbox per handler stays up meanwhile (steady state)."""
    cluster = Cluster(os.path.join(ctx.work, "cri"), ctx.installed)
    nodes = {}
    try:
        cluster.set_network("weft", NETWORK)
        for name in RELEASES:
            nodes[name] = CriNode(cluster, {"sa": standalone_conflist}, which=release(name))
        for node in nodes.values():  # every lease first, then the runtimes
            node.start_agent()
        for node in nodes.values():
            node.start()
        ctx.record(cluster.namespace_names())
        ctx.say(f"cri: containerd {' and '.join(nodes)}, {len(HANDLERS)} handlers each, {rounds} sandboxes per "
                "handler, twice")
        for name, node in nodes.items():  # warm-up, unmeasured
            for label, handler in HANDLERS.items():
                _one(node, handler, f"warm-{label}")
        empty = _phase(nodes, rounds, "e")
        residents = {name: [node.run_sandbox(f"resident-{label}", handler) for label, handler in HANDLERS.items()]
                     for name, node in nodes.items()}
        resident = _phase(nodes, rounds, "r")
        figure = {"rounds": rounds, "releases": {}}
        for name, node in nodes.items():
            for sandbox_id in residents[name]:
                node.remove_sandbox(sandbox_id)
            sockets = {"weft": node.conflists[""]["plugins"][0]["agentSocket"],
                       "weft_standalone": os.path.join(node.node.dir, NOBODY)}
            figure["releases"][name] = {
                **empty[name], "resident": resident[name],
                "cni_version": node.release.cni_version,
                "reference_plugins": node.release.plugins_dir,
                "reference_plugins_version": plugins_version(node.release),
                "exec_ms": {"weft": _exec_ms(node, "weft", sockets["weft"]),
                            "weft_standalone": _exec_ms(node, "weft", sockets["weft_standalone"]),
                            "bridge": _exec_ms(node, "bridge", sockets["weft"])},
                "versions": {**tool_versions(node.release), "cri_api": node.client.version().runtime_api_version}}
        return figure
    finally:
        for node in nodes.values():
            node.cleanup()
        cluster.cleanup()
