"""Pod-to-pod TCP throughput (iperf3): weft against the hand-built reference.

weft: a 2-node lab.cluster (etcd, weftd per node, VXLAN, the network config's
defaults as a user would run them), pods A and A2 on node 1 and B on node 2, all
attached by the real `weft` executable.  Reference: bench.reference's plain-`ip`
copy of the same topology.  Same-node = A2 -> A over the node's bridge; cross-node
= B -> A over VXLAN.  Runs alternate weft/reference and rotate each round; the
figure is the median of the rounds.
"""

import json
import os
import subprocess

from lab.cluster import Cluster, wait_for

from .context import quiesce, rotate
from .reference import MTU, ReferenceTopology

PORT = 5201
NETWORK = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}


def _listening(ns_name: str, port: int) -> bool:
    out = subprocess.run(["ip", "netns", "exec", ns_name, "ss", "-Hltn", f"sport = :{port}"],
                         capture_output=True, text=True, timeout=10).stdout
    return bool(out.strip())


def iperf(server_ns: str, server_ip: str, client_ns: str, seconds: int) -> dict:
    """One iperf3 run between two namespaces; bits/s received and sender retransmits."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip,
                               "-p", str(PORT)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _listening(server_ns, PORT) or server.poll() is not None, 10,
                 what=f"iperf3 server in {server_ns}")
        if server.poll() is not None:
            raise RuntimeError(f"iperf3 server exited: {server.stderr.read().decode()[:300]}")
        proc = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-p", str(PORT),
                               "-t", str(seconds), "-J"], capture_output=True, text=True,
                              timeout=seconds + 30)
        data = json.loads(proc.stdout) if proc.stdout.strip() else {}
        if proc.returncode != 0 or "end" not in data:
            raise RuntimeError(f"iperf3 client failed ({proc.returncode}): "
                               f"{data.get('error') or proc.stderr.strip()[:300]}")
        return {"bps": data["end"]["sum_received"]["bits_per_second"],
                "retransmits": data["end"].get("sum_sent", {}).get("retransmits")}
    finally:
        if server.poll() is None:
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=5)


def _median(values):
    data = sorted(values)
    n = len(data)
    return (data[n // 2] if n % 2 else (data[n // 2 - 1] + data[n // 2]) / 2) if n else None


def _link_mtu(ns, ifname="eth0"):
    links = ns.ip_json("link", "show", "dev", ifname)
    return links[0].get("mtu") if links else None


def two_nodes(cluster, networks: dict, **agent) -> list:
    """Two nodes whose agents serve `networks` ({name: config}), each ready and peered;
    `agent`: more start_agent arguments (e.g. discover=True)."""
    for name, config in networks.items():
        cluster.set_network(name, config)
    nodes = [cluster.add_node() for _ in range(2)]
    for node in nodes:
        node.start_agent(networks=tuple(networks), **agent)
    for node in nodes:
        for name in networks:
            node.wait_ready(name, timeout=60)
            wait_for(lambda: len((node.status(name) or {}).get("peers", [])) == 1, 30,
                     what=f"{node.name} {name} peer")
    return nodes


def throughput(ctx, seconds: int, rounds: int) -> dict:
    ctx.say(f"throughput: iperf3 {seconds}s x {rounds} rounds, same-node and cross-node, weft vs reference")
    cluster = Cluster(os.path.join(ctx.work, "tp-cluster"), ctx.installed, reconcile_interval=10.0)
    reference = None
    try:
        nodes = two_nodes(cluster, {"weft": NETWORK})

        def conf(node):
            return node.netconf(agentSocket=os.path.join(node.run_dir, "weftd.sock"))

        a = nodes[0].add_pod(conf=conf(nodes[0]), name="tp-a")
        a2 = nodes[0].add_pod(conf=conf(nodes[0]), name="tp-a2")
        b = nodes[1].add_pod(conf=conf(nodes[1]), name="tp-b")
        ctx.record(cluster.namespace_names())
        reference = ReferenceTopology(ctx, 2)
        ra, ra_ip = reference.nodes[0].add_pod(ctx)
        ra2, _ = reference.nodes[0].add_pod(ctx)
        rb, _ = reference.nodes[1].add_pod(ctx)
        runs = {  # (server ns, server ip, client ns)
            ("weft", "same_node"): (a.ns.name, a.ip, a2.ns.name),
            ("reference", "same_node"): (ra.name, ra_ip, ra2.name),
            ("weft", "cross_node"): (a.ns.name, a.ip, b.ns.name),
            ("reference", "cross_node"): (ra.name, ra_ip, rb.name),
        }
        for (impl, topo), (_, ip, client) in runs.items():  # reachability before timing anything
            ok = subprocess.run(["ip", "netns", "exec", client, "ping", "-c", "1", "-W", "2", ip],
                                capture_output=True, timeout=10).returncode == 0
            if not ok:
                raise RuntimeError(f"{impl} {topo}: {client} cannot reach {ip}")
        samples = {key: [] for key in runs}
        order = list(runs)
        for r in range(rounds):
            quiesce(ctx)
            for key in rotate(order, r):
                samples[key].append(iperf(*runs[key], seconds))
            ctx.say(f"throughput round {r + 1}/{rounds} done")
        result = {"seconds": seconds, "rounds": rounds, "tool": "iperf3 -c IP -t S -J (1 TCP stream)",
                  "weft_pod_mtu": _link_mtu(a.ns), "reference_pod_mtu": MTU,
                  "weft_network_config": NETWORK}
        for topo in ("same_node", "cross_node"):
            weft = _median([s["bps"] for s in samples[("weft", topo)]])
            ref = _median([s["bps"] for s in samples[("reference", topo)]])
            result[topo] = {"weft_gbps": round(weft / 1e9, 3), "reference_gbps": round(ref / 1e9, 3),
                            "ratio": round(weft / ref, 3) if ref else None,
                            "weft_samples_gbps": [round(s["bps"] / 1e9, 3) for s in samples[("weft", topo)]],
                            "reference_samples_gbps": [round(s["bps"] / 1e9, 3)
                                                       for s in samples[("reference", topo)]],
                            "weft_retransmits": [s["retransmits"] for s in samples[("weft", topo)]],
                            "reference_retransmits": [s["retransmits"] for s in samples[("reference", topo)]]}
        return result
    finally:
        ctx.record(cluster.namespace_names())
        cluster.cleanup()
        if reference is not None:
            ctx.release(reference.namespace_names())


def agent_pod(node, network: str, bridge: str, name: str):
    """A pod of `network` on its own bridge, attached through the node's weftd."""
    conf = node.netconf(network, bridge=bridge, agentSocket=os.path.join(node.run_dir, "weftd.sock"))
    return node.add_pod(network=network, conf=conf, name=name)


def paired_rounds(ctx, runs: dict, seconds: int, rounds: int, label: str) -> dict:
    """{kind: [iperf sample per round]} for runs {kind: (server ns, server ip, client ns)}:
    every client first reaches its server (WireGuard handshakes take up to ~5 s), then
    each round, after the machine quiets down, runs every kind once in a rotated order."""
    for kind, (_, ip, client) in runs.items():
        wait_for(lambda: subprocess.run(["ip", "netns", "exec", client, "ping", "-c", "1", "-W", "1", ip],
                                        capture_output=True, timeout=10).returncode == 0, 30, 0.2,
                 what=f"{kind}: {client} reaches {ip}")
    samples = {kind: [] for kind in runs}
    for r in range(rounds):
        quiesce(ctx)
        for kind in rotate(list(runs), r):
            samples[kind].append(iperf(*runs[kind], seconds))
        ctx.say(f"{label} round {r + 1}/{rounds} done")
    return samples
