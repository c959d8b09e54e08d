"""Figure "ipv6-only": per-pod ADD/DEL on an IPv6-only network against the Go chain,
beside the same on IPv4, in one interleaved run.

Contenders: the Go chain (bridge + host-local of plugins 1.9.1), weft standalone and
weft through its agent, each twice, in node namespaces of their own: once with one IPv4
range (10.x.0.0/16), once with one IPv6 range (fd0a:x::/64) and nothing else, as a pod of
an IPv6-only network gets it.  Everything else is the sequential figure's (masquerade
off, a gateway on the bridge, a default route in the pod).  All six take attachment i in
turn, the order rotating with i, so machine noise hits both families alike; the ratio
weft / Go per family, and the IPv6 ratio against the IPv4 one, are what the figure says.
"""

from .attach import Tally, _finish, interleaved_add_del
from .contenders import AGENT, GO, STANDALONE, make_contenders

KINDS = (GO, STANDALONE, AGENT)
FAMILIES = (4, 6)


def ipv6_only(ctx, attachments: int) -> dict:
    ctx.say(f"ipv6-only: {attachments} ADDs then DELs per contender, IPv4 and IPv6 ranges, interleaved")
    contenders, pods = [], {}
    try:
        for family in FAMILIES:
            contenders += make_contenders(ctx, "ipv6-only", first_index=len(contenders), kinds=KINDS, family=family)
        for c in contenders:
            pods[c] = ctx.pod_namespaces(f"wb6{c.family}{c.kind[0]}{c.kind[-1]}", attachments + 1)
            c.warm_up(pods[c][-1])
        tallies = {c: Tally() for c in contenders}
        interleaved_add_del(ctx, contenders, pods, attachments, tallies, "ipv6-only")
        result = {"attachments": attachments}
        for c in contenders:
            t = tallies[c]
            result.setdefault(f"ipv{c.family}", {})[c.kind] = {
                "add_ms": t.stats("ADD"), "del_ms": t.stats("DEL"), "errors": dict(t.errors),
                "error_samples": t.messages, "distinct_ips": len(set(t.ips)),
                "families": sorted({4 if "." in ip else 6 for ip in t.ips})}
        return result
    finally:
        _finish(ctx, contenders, pods)
