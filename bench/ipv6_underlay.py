"""Cross-node pod TCP (iperf3) over an IPv6 underlay: weft's VXLAN (weft-v6.<VNI>) and
WireGuard backends against a hand-built pair of the same kind, in one run.

weft: a 2-node lab.cluster on an IPv6-only underlay (etcd over IPv6; weftd started with
--iface eth0, so it finds its PublicIPv6 itself), serving two IPv6-only networks as a
user would configure them (defaults kept: IPMasq on, masquerade rules installed): `v6vx`
(vxlan) and `v6wg` (wireguard), one pod of each on each node.  Reference:
bench.reference with family=6 (plain `ip`/`wg`: IPv6 underlay, IPv6 pods, static
peers), once per overlay.  Runs alternate and rotate each round; the figure is the
median of the rounds.
"""

import os

from lab.cluster import Cluster

from .reference import MTU6, WG_MTU6, ReferenceTopology
from .throughput import _link_mtu, _median, agent_pod, paired_rounds, two_nodes

VXLAN = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd10:81::/48",
         "Backend": {"Type": "vxlan", "VNI": 81}}
WIREGUARD = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd10:82::/48",
             "Backend": {"Type": "wireguard"}}
KINDS = ("weft_vxlan", "reference_vxlan", "weft_wireguard", "reference_wireguard")


def ipv6_underlay(ctx, seconds: int, rounds: int) -> dict:
    ctx.say(f"ipv6-underlay: iperf3 {seconds}s x {rounds} rounds cross-node over IPv6, weft vs hand-built, "
            "vxlan and wireguard")
    cluster = Cluster(os.path.join(ctx.work, "v6u-cluster"), ctx.installed, reconcile_interval=10.0,
                      underlay="ipv6")
    references = []
    try:
        nodes = two_nodes(cluster, {"v6vx": VXLAN, "v6wg": WIREGUARD}, discover=True)

        va, vb = agent_pod(nodes[0], "v6vx", "cbr0", "v6vx-a"), agent_pod(nodes[1], "v6vx", "cbr0", "v6vx-b")
        wa, wb = agent_pod(nodes[0], "v6wg", "cbr1", "v6wg-a"), agent_pod(nodes[1], "v6wg", "cbr1", "v6wg-b")
        ctx.record(cluster.namespace_names())
        runs = {"weft_vxlan": (va.ns.name, va.ip, vb.ns.name), "weft_wireguard": (wa.ns.name, wa.ip, wb.ns.name)}
        implementation = {}
        for overlay in ("vxlan", "wireguard"):
            reference = ReferenceTopology(ctx, 2, overlay=overlay, family=6)
            references.append(reference)
            ra, ra_ip = reference.nodes[0].add_pod(ctx)
            rb, _ = reference.nodes[1].add_pod(ctx)
            runs[f"reference_{overlay}"] = (ra.name, ra_ip, rb.name)
            implementation[overlay] = reference.implementation
        samples = paired_rounds(ctx, runs, seconds, rounds, "ipv6-underlay")
        result = {"seconds": seconds, "rounds": rounds, "tool": "iperf3 -c IP -t S -J (1 TCP stream)",
                  "weft_wireguard_implementation": nodes[0].status("v6wg").get("wireguard", {}).get("implementation"),
                  "reference_wireguard_implementation": implementation["wireguard"],
                  "weft_vxlan_pod_mtu": _link_mtu(va.ns), "weft_wireguard_pod_mtu": _link_mtu(wa.ns),
                  "reference_vxlan_pod_mtu": MTU6, "reference_wireguard_pod_mtu": WG_MTU6,
                  "weft_network_configs": {"v6vx": VXLAN, "v6wg": WIREGUARD}}
        for kind in KINDS:
            result[kind] = {"gbps": round(_median([s["bps"] for s in samples[kind]]) / 1e9, 3),
                            "samples_gbps": [round(s["bps"] / 1e9, 3) for s in samples[kind]],
                            "retransmits": [s["retransmits"] for s in samples[kind]]}
        for overlay in ("vxlan", "wireguard"):
            weft, ref = result[f"weft_{overlay}"]["gbps"], result[f"reference_{overlay}"]["gbps"]
            result[f"ratio_{overlay}"] = round(weft / ref, 3) if ref else None
        return result
    finally:
        ctx.record(cluster.namespace_names())
        cluster.cleanup()
        for reference in references:
            reference.stop()
            ctx.release(reference.namespace_names())
