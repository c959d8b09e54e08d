"""Cross-node pod TCP (iperf3) over weft's wireguard backend, against weft's vxlan
backend and a hand-built WireGuard pair with the same implementation, in one run.

weft: a 2-node lab.cluster whose agents serve two networks, `weft` (vxlan) and `wg`
(wireguard), with a pod of each network on each node.  Reference: bench.reference
with overlay="wireguard" (wg-configured devices, static peers and routes).  Runs
alternate and rotate each round; the figure is the median of the rounds.  Which
WireGuard implementation ran (kernel or wireguard-go) is recorded for both sides.
"""

import os

from lab.cluster import Cluster

from .reference import WG_MTU, ReferenceTopology
from .throughput import _link_mtu, _median, agent_pod, paired_rounds, two_nodes

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
WIREGUARD = {"Network": "10.245.0.0/16", "Backend": {"Type": "wireguard"}}
KINDS = ("weft_wireguard", "weft_vxlan", "reference_wireguard")


def wireguard(ctx, seconds: int, rounds: int) -> dict:
    ctx.say(f"wireguard: iperf3 {seconds}s x {rounds} rounds cross-node, weft wireguard / vxlan / hand-built")
    cluster = Cluster(os.path.join(ctx.work, "wg-cluster"), ctx.installed, reconcile_interval=10.0)
    reference = None
    try:
        nodes = two_nodes(cluster, {"weft": VXLAN, "wg": WIREGUARD})

        wa, wb = agent_pod(nodes[0], "wg", "cbr1", "wg-a"), agent_pod(nodes[1], "wg", "cbr1", "wg-b")
        va, vb = agent_pod(nodes[0], "weft", "cbr0", "vx-a"), agent_pod(nodes[1], "weft", "cbr0", "vx-b")
        ctx.record(cluster.namespace_names())
        reference = ReferenceTopology(ctx, 2, overlay="wireguard")
        ra, ra_ip = reference.nodes[0].add_pod(ctx)
        rb, _ = reference.nodes[1].add_pod(ctx)
        runs = {"weft_wireguard": (wa.ns.name, wa.ip, wb.ns.name),
                "weft_vxlan": (va.ns.name, va.ip, vb.ns.name),
                "reference_wireguard": (ra.name, ra_ip, rb.name)}
        samples = paired_rounds(ctx, runs, seconds, rounds, "wireguard")
        implementation = nodes[0].status("wg").get("wireguard", {}).get("implementation")
        result = {"seconds": seconds, "rounds": rounds, "tool": "iperf3 -c IP -t S -J (1 TCP stream)",
                  "weft_implementation": implementation, "reference_implementation": reference.implementation,
                  "weft_wireguard_pod_mtu": _link_mtu(wa.ns), "weft_vxlan_pod_mtu": _link_mtu(va.ns),
                  "reference_pod_mtu": WG_MTU}
        for kind in KINDS:
            result[kind] = {"gbps": round(_median([s["bps"] for s in samples[kind]]) / 1e9, 3),
                            "samples_gbps": [round(s["bps"] / 1e9, 3) for s in samples[kind]],
                            "retransmits": [s["retransmits"] for s in samples[kind]]}
        ref, vx = result["reference_wireguard"]["gbps"], result["weft_vxlan"]["gbps"]
        weft = result["weft_wireguard"]["gbps"]
        result["ratio_vs_reference"] = round(weft / ref, 3) if ref else None
        result["ratio_vs_vxlan"] = round(weft / vx, 3) if vx else None
        return result
    finally:
        ctx.record(cluster.namespace_names())
        cluster.cleanup()
        if reference is not None:
            reference.stop()
            ctx.release(reference.namespace_names())
