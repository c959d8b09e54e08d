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

import copy
import json
import os
import subprocess
import time

from lab import runtimes
from lab.cluster import Cluster
from lab.containerd import RELEASES, release, tool_versions
from lab.cri_node import CriNode, copy_conflist

from .context import percentile, ratio, rotate, summary
from .family import NAMES, families, ip_family, network_config, pod_range, slot

NETWORKS = {4: "weft", 6: "weft6"}  # bench/family.py network_config
HANDLERS = {4: {"weft": "", "weft_standalone": "sa", "reference": "ref"},
            6: {"weft": "v6", "weft_standalone": "sa6", "reference": "ref6"}}
WEFT_LABELS = ("weft", "weft_standalone")
NOBODY = "nobody-listens.sock"


def standalone_conflist(made, family: int = 4) -> dict:
    """The node's weft conflist run without an agent: static ranges, its own bridge."""
    node = made.node
    tag = "" if family == 4 else "6"
    return copy_conflist(made.conflists[""], f"weftsa{tag}", bridge=f"cbrsa{tag}",
                         agentSocket=os.path.join(node.dir, NOBODY),
                         subnetFile=os.path.join(node.dir, f"weftsa{tag}-no-lease.env"),
                         ipam={"type": "weft-ipam", "dataDir": node.ipam_dir,
                               "ranges": [[{"subnet": pod_range(family, 98, node.index)}]]})


def ipv6_conflist(made) -> dict:
    """The shipped conflist on the node's IPv6-only network (its weftd serves both)."""
    made.node.wait_ready(NETWORKS[6])
    return copy_conflist(made.conflists[""], NETWORKS[6], bridge="cbr6",
                         subnetFile=made.node.subnet_file(NETWORKS[6]))


def ipv6_reference_conflist(made) -> dict:
    """The release's reference chain with one IPv6 host-local range, on its own bridge."""
    conflist = copy.deepcopy(made.conflists["ref"])
    conflist["name"] = "ref6"
    bridge = conflist["plugins"][0]
    bridge["bridge"] = "cni-ref6"
    bridge["ipam"] = {**bridge["ipam"], "ranges": [[{"subnet": pod_range(6, 99, made.node.index)}]],
                      "dataDir": os.path.join(made.node.dir, "host-local6")}
    return conflist


IPV6_HANDLERS = {"v6": ipv6_conflist, "sa6": lambda made: standalone_conflist(made, 6),
                 "ref6": ipv6_reference_conflist}


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


def _one(node, handler: str, name: str, family: int = 4) -> tuple:
    """(sandbox ID, RunPodSandbox ms, StopPodSandbox ms, Stop + RemovePodSandbox ms, pod IP);
    the pod IP (PodSandboxStatus, untimed) must be of the handler's family."""
    client = node.client
    sandbox_id, run_ms = _timed(lambda: client.run_pod_sandbox(node.runtime.sandbox_config(name), handler))
    pod_ip = client.pod_sandbox_status(sandbox_id).network.ip
    _, stop_ms = _timed(lambda: client.stop_pod_sandbox(sandbox_id))
    _, remove_ms = _timed(lambda: client.remove_pod_sandbox(sandbox_id))
    if not pod_ip or ip_family(pod_ip) != family:
        raise RuntimeError(f"containerd {node.release.name}, handler {handler!r}: sandbox {name} got pod IP "
                           f"{pod_ip!r}, expected an IPv{family} address ({NAMES[family]} network)")
    return sandbox_id, run_ms, stop_ms, stop_ms + remove_ms, pod_ip


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


def _handlers(fams) -> list:
    """(family, label, runtime handler) of each measured handler."""
    return [(family, label, handler) for family in fams for label, handler in HANDLERS[family].items()]


def _phase(nodes: dict, rounds: int, tag: str, fams) -> dict:
    """`rounds` sandboxes per handler on each release, interleaved; per release, family
    and handler the latencies and (weft) the time inside its handlers, plus the ratios."""
    handlers = _handlers(fams)
    samples = {name: {(family, label): {"run": [], "stop": [], "stop_remove": [], "ids": [], "ips": []}
                      for family, label, _ in handlers} for name in nodes}
    for index in range(rounds):
        for name in rotate(list(nodes), index):
            for family, label, handler in rotate(handlers, index):
                sandbox_id, run_ms, stop_ms, stop_remove_ms, pod_ip = _one(
                    nodes[name], handler, f"{tag}{index}-{handler or 'weft'}-{label}", family)
                entry = samples[name][(family, label)]
                entry["ids"].append(sandbox_id)
                entry["run"].append(run_ms)
                entry["stop"].append(stop_ms)
                entry["stop_remove"].append(stop_remove_ms)
                entry["ips"].append(pod_ip)
    out = {}
    for name, node in nodes.items():
        logged = _weft_log_ms(node)
        out[name] = {}
        for family in fams:
            phase = {label: {"run_ms": summary(s["run"]), "stop_ms": summary(s["stop"]),
                             "stop_remove_ms": summary(s["stop_remove"]),
                             "pod_ip_families": sorted({ip_family(ip) for ip in s["ips"]})}
                     for (fam, label), s in samples[name].items() if fam == family}
            for label in WEFT_LABELS:
                ids = samples[name][(family, label)]["ids"]
                for command, key in (("ADD", "add_in_handlers_ms"), ("DEL", "del_in_handlers_ms")):
                    phase[label][key] = summary(logged[(command, i)][0] for i in ids if (command, i) in logged)
                phase[label]["via"] = sorted({logged[("ADD", i)][1] for i in ids if ("ADD", i) in logged})
            for label, prefix in (("weft", ""), ("weft_standalone", "standalone_")):
                for key in ("run", "stop", "stop_remove"):
                    phase[f"{prefix}{key}_p50_ratio"] = ratio(phase[label][f"{key}_ms"]["p50"],
                                                              phase["reference"][f"{key}_ms"]["p50"])
            out[name][family] = phase
    return out


def cri(ctx, rounds: int) -> dict:
    """Two phases: empty nodes (each ADD also creates what the first pod needs: for
    weft with masquerade the nftables table, which the DEL of the last pod removes),
    then nodes where one sandbox per handler stays up meanwhile (steady state).  The
    IPv6-only handlers (bench/family.py) take their turns on the same containerds; the
    node's weftd serves both networks."""
    fams = families(ctx)
    cluster = Cluster(os.path.join(ctx.work, "cri"), ctx.installed)
    nodes = {}
    try:
        networks = [NETWORKS[4], *([NETWORKS[6]] if 6 in fams else [])]  # CriNode's "" handler is on weft
        for family, network in zip((4, 6), networks):
            cluster.set_network(network, network_config(family, vni=family))
        extra = {"sa": standalone_conflist, **(IPV6_HANDLERS if 6 in fams else {})}
        for name in RELEASES:
            nodes[name] = CriNode(cluster, extra, which=release(name))
        for node in nodes.values():  # every lease first, then the runtimes
            node.start_agent(networks=tuple(networks))
        for node in nodes.values():
            node.start()
        ctx.record(cluster.namespace_names())
        handlers = _handlers(fams)
        ctx.say(f"cri: containerd {' and '.join(nodes)}, {len(handlers)} handlers each "
                f"({' and '.join(NAMES[f] for f in fams)}), {rounds} sandboxes per handler, twice")
        for name, node in nodes.items():  # warm-up, unmeasured
            for family, label, handler in handlers:
                _one(node, handler, f"warm-{handler or 'weft'}-{label}", family)
        empty = _phase(nodes, rounds, "e", fams)
        residents = {name: [node.run_sandbox(f"resident-{handler or 'weft'}-{label}", handler)
                            for _, label, handler in handlers] for name, node in nodes.items()}
        resident = _phase(nodes, rounds, "r", fams)
        figure = {"rounds": rounds, "releases": {}}
        for name, node in nodes.items():
            for sandbox_id in residents[name]:
                node.remove_sandbox(sandbox_id)
            sockets = {"weft": node.conflists[""]["plugins"][0]["agentSocket"],
                       "weft_standalone": os.path.join(node.node.dir, NOBODY)}
            rel = figure["releases"][name] = {
                "cni_version": node.release.cni_version,
                "reference_plugins": node.release.plugins_dir,
                "reference_plugins_version": plugins_version(node.release),
                "exec_ms": {"weft": _exec_ms(node, "weft", sockets["weft"]),
                            "weft_standalone": _exec_ms(node, "weft", sockets["weft_standalone"]),
                            "bridge": _exec_ms(node, "bridge", sockets["weft"])},
                "versions": {**tool_versions(node.release), "cri_api": node.client.version().runtime_api_version}}
            for family in fams:
                slot(rel, family).update({**empty[name][family], "resident": resident[name][family]})
        return figure
    finally:
        for node in nodes.values():
            node.cleanup()
        cluster.cleanup()
