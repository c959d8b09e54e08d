"""RunPodSandbox latency through containerd's CRI: weft vs the reference chain.

One weft node (node namespace, real etcd, weftd holding its lease) with a private
containerd (lab.cri_node) and four runtime handlers on that one containerd:
  ""       conf/10-weft.conflist as shipped: weft through the agent's socket, then
           portmap; IPMasq comes from the subnet file (true by default: an nftables
           masquerade per pod);
  ref      bridge + host-local + portmap from /usr/lib/cni, no masquerade;
  nomasq   the weft conflist with "ipMasq": false (what masquerading costs);
  refmasq  the reference chain with bridge's "ipMasq": true (iptables), the same
           semantics as weft's default.
Each sandbox is timed around the RunPodSandbox gRPC call (CRI client in this
process), then stopped (timed too) and removed.  One unmeasured sandbox per handler
warms up; the handlers then take turns, the order rotating each round.

Where weft's time goes: weft's log gives the milliseconds each ADD spent inside its
handlers (in the agent); `exec_ms` is one VERSION call of `weft` (through the agent
socket) and of the Go `bridge`, run where containerd runs them: the per-exec cost
each plugin pays before doing any work.
"""

import json
import os
import time

from lab.cluster import Cluster
from lab.containerd import tool_versions
from lab.cri_node import CriNode, copy_conflist

from .context import percentile, ratio, rotate, summary

NETWORK = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
HANDLERS = {"weft": "", "reference": "ref", "weft_no_masq": "nomasq", "reference_masq": "refmasq"}


def _timed(call):
    started = time.perf_counter()
    value = call()
    return value, (time.perf_counter() - started) * 1000.0


def _one(node, handler: str, name: str) -> tuple:
    client = node.client
    sandbox_id, run_ms = _timed(lambda: client.run_pod_sandbox(node.runtime.sandbox_config(name), handler))
    _, stop_ms = _timed(lambda: client.stop_pod_sandbox(sandbox_id))
    client.remove_pod_sandbox(sandbox_id)
    return sandbox_id, run_ms, stop_ms


def _exec_ms(node, plugin: str, rounds: int = 20) -> float:
    """p50 of one VERSION call of `plugin` where containerd runs it (weft: through the
    agent named by the conflist's agentSocket, as its ADDs go)."""
    stdin = json.dumps({"cniVersion": "1.0.0", "name": "weft", "type": plugin,
                        "agentSocket": node.conflists[""]["plugins"][0]["agentSocket"]})
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        node.runtime.in_node([os.path.join(node.runtime.bin_dir, plugin)], input_text=stdin,
                             env={"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "")})
        samples.append((time.perf_counter() - started) * 1000.0)
    return round(percentile(samples, 50), 2)


def _weft_log_ms(node) -> dict:
    """{(command, container ID): ms inside weft's handlers} from the node's weft log
    (RemovePodSandbox runs a second DEL, which finds nothing left to do)."""
    out = {}
    try:
        with open(os.path.join(node.node.dir, "weft.log")) as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if "ms" in record and not record.get("error"):  # the first DEL is StopPodSandbox's
                    out.setdefault((record.get("command"), record.get("containerID")), record["ms"])
    except OSError:
        pass
    return out


def _phase(node, rounds: int, tag: str) -> dict:
    """`rounds` sandboxes per handler, interleaved; per handler the latencies and (weft)
    the time inside its handlers, plus the ratios."""
    samples = {label: {"run": [], "stop": [], "ids": []} for label in HANDLERS}
    for index in range(rounds):
        for label, handler in rotate(list(HANDLERS.items()), index):
            sandbox_id, run_ms, stop_ms = _one(node, handler, f"{tag}{index}-{label}")
            samples[label]["ids"].append(sandbox_id)
            samples[label]["run"].append(run_ms)
            samples[label]["stop"].append(stop_ms)
    phase = {label: {"run_ms": summary(s["run"]), "stop_ms": summary(s["stop"])} for label, s in samples.items()}
    logged = _weft_log_ms(node)
    for label in ("weft", "weft_no_masq"):
        for command, key in (("ADD", "add_in_handlers_ms"), ("DEL", "del_in_handlers_ms")):
            phase[label][key] = summary(logged[(command, i)] for i in samples[label]["ids"] if (command, i) in logged)
    p50 = {label: phase[label]["run_ms"]["p50"] for label in HANDLERS}
    phase["run_p50_ratio"] = ratio(p50["weft"], p50["reference"])
    phase["no_masq_run_p50_ratio"] = ratio(p50["weft_no_masq"], p50["reference"])
    phase["masq_run_p50_ratio"] = ratio(p50["weft"], p50["reference_masq"])
    phase["stop_p50_ratio"] = ratio(phase["weft"]["stop_ms"]["p50"], phase["reference"]["stop_ms"]["p50"])
    return phase


def cri(ctx, rounds: int) -> dict:
    """Two phases: an empty node (each ADD also creates what the first pod needs: for
    weft with masquerade the nftables table, which the DEL of the last pod removes),
    then a node where one sandbox per handler stays up meanwhile (steady state)."""
    cluster = Cluster(os.path.join(ctx.work, "cri"), ctx.installed)
    node = None
    try:
        cluster.set_network("weft", NETWORK)
        node = CriNode(cluster, {"nomasq": lambda made: copy_conflist(made.conflists[""], "weft", ipMasq=False),
                                 "refmasq": lambda made: copy_conflist(made.conflists["ref"], "ref", ipMasq=True)})
        node.start_agent()
        node.start()
        ctx.record(cluster.namespace_names())
        ctx.say(f"cri: containerd in {node.node.ns.name}, {rounds} sandboxes per handler, twice")
        for label, handler in HANDLERS.items():  # warm-up, unmeasured
            _one(node, handler, f"warm-{label}")
        figure = _phase(node, rounds, "e")
        residents = [node.run_sandbox(f"resident-{label}", handler) for label, handler in HANDLERS.items()]
        figure["resident"] = _phase(node, rounds, "r")
        for sandbox_id in residents:
            node.remove_sandbox(sandbox_id)
        figure["exec_ms"] = {"weft": _exec_ms(node, "weft"), "bridge": _exec_ms(node, "bridge")}
        figure["rounds"] = rounds
        figure["versions"] = {**tool_versions(), "cri_api": node.client.version().runtime_api_version}
        return figure
    finally:
        if node is not None:
            node.cleanup()
        cluster.cleanup()
