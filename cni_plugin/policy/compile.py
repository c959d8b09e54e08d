"""NetworkPolicy as one node's nftables table: pure planning (no kernel, no etcd).

The table (family inet, `weft_policy_<network>`) decides the first packet of every
connection forwarded to or from this node's pods; replies of allowed connections pass
by conntrack.  Rules grow with policies, elements with pods (O(pods + policies) rules,
never one rule per pod pair):

    set iso_in4/iso_in6     local pods some policy isolates for ingress
    set iso_out4/iso_out6   local pods some policy isolates for egress
    per policy P (id p<hash of namespace/name>):
      set P_sel4/6          local pods P selects
      set P_i<j>_4/6        peers of P's ingress rule j (pods anywhere in the cluster by
                            selector, ipBlocks minus their excepts; interval sets)
      set P_e<j>_4/6        the same for egress rule j
      counter P_drop        packets dropped while P isolated the pod
    chain forward           filter hook forward:
      ct state established,related accept
      ip saddr @iso_out4 jump egress         (and ip6)
      ip daddr @iso_in4  jump ingress        (and ip6)
    chain egress            one rule per (policy, rule, protocol): saddr in P_sel, daddr in
                            P_e<j>, the rule's ports -> return (allowed: on to ingress);
                            then per policy `saddr @P_sel counter P_drop`; then drop
    chain ingress           the mirror image with daddr/saddr swapped

Only this node's pods are in the P_sel/iso sets: ingress is decided where the
destination lives, egress where the source lives, so same-node (bridged) and
cross-node (VXLAN, host-gw) flows meet the same rules.  Traffic the node itself sends
(kubelet probes) leaves through the output hook, which the table does not hook.
Named ports (a rule port given by name) are not programmed: such a port allows nothing
in the kernel (see the README's limits).
"""

import hashlib
import ipaddress
import json
from dataclasses import dataclass, field

from .verdict import Endpoint

FAMILY = "inet"
VERSIONS = (4, 6)
PROTO = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
L4 = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


def table_name(network: str) -> str:
    return "weft_policy_" + "".join(c if c.isalnum() or c == "_" else "_" for c in network)


def policy_id(ref: str) -> str:
    return "p" + hashlib.sha256(ref.encode()).hexdigest()[:10]


@dataclass
class Table:
    """What the node's table must hold.  sets: name -> (nft type, interval?, frozenset of
    str (addresses, or networks in interval sets)); chains: name -> [(comment, expr)];
    counters: {counter name: policy ref}; dynamic: name -> nft type of the sets the
    packet path fills (denied flows), whose elements are the kernel's own."""
    name: str
    sets: dict = field(default_factory=dict)
    chains: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    dynamic: dict = field(default_factory=dict)

    def shape(self) -> tuple:
        """Everything but set elements: equal shapes differ only in elements."""
        return (self.name, tuple(sorted((n, t, i) for n, (t, i, _) in self.sets.items())),
                tuple(sorted((c, tuple((x, json.dumps(e, sort_keys=True)) for x, e in rules))
                             for c, rules in self.chains.items())),
                tuple(sorted(self.counters)), tuple(sorted(self.dynamic)))


def _addr(version: int, field_name: str) -> dict:
    return {"payload": {"protocol": PROTO[version][0], "field": field_name}}


def _in_set(version: int, field_name: str, name: str) -> dict:
    return {"match": {"op": "==", "left": _addr(version, field_name), "right": f"@{name}"}}


def _networks(nets, version: int) -> frozenset:
    nets = ipaddress.collapse_addresses(n for n in nets if n.version == version)
    return frozenset(str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in nets)


def _block_networks(block) -> list:
    """An ipBlock's cidr without its excepts, as disjoint networks."""
    remaining = [block.cidr]
    for cut in block.excepts:
        nxt = []
        for net in remaining:
            if cut.subnet_of(net):
                nxt.extend(net.address_exclude(cut))
            elif not net.subnet_of(cut):
                nxt.append(net)
        remaining = nxt
    return remaining


def _port_matches(ports) -> list:
    """[(comment part, [expr])] one per protocol of the rule's numeric ports; [("", [])]
    when the rule has no ports (every port of every protocol)."""
    if not ports:
        return [("any port", [])]
    out = []
    for protocol in ("TCP", "UDP", "SCTP"):
        mine = [p for p in ports if p.protocol == protocol and not isinstance(p.port, str)]
        if not mine:
            continue
        expr = [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": L4[protocol]}}]
        if all(p.port is not None for p in mine):
            values = sorted({p.port if p.end_port is None else (p.port, p.end_port) for p in mine},
                            key=lambda v: v if isinstance(v, int) else v[0])
            right = {"set": [v if isinstance(v, int) else {"range": list(v)} for v in values]}
            expr.append({"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}},
                                   "right": right}})
        out.append((protocol.lower(), expr))
    return out


DENIAL_PROTOCOLS = {"set": ["tcp", "udp", "sctp"]}
DENIED_RATE = 100       # new denied flows recorded per second at most


def denied_set(direction: str, version: int) -> str:
    return f"denied_{'in' if direction == 'ingress' else 'out'}{version}"


def _record_denial(direction: str, version: int) -> list:
    proto = PROTO[version][0]
    return [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": DENIAL_PROTOCOLS}},
            {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": f"ipv{version}"}},
            {"limit": {"rate": DENIED_RATE, "per": "second"}},
            {"set": {"op": "add", "set": f"@{denied_set(direction, version)}", "elem": {"concat": [
                _addr(version, "saddr"), _addr(version, "daddr"), {"meta": {"key": "l4proto"}},
                {"payload": {"protocol": "th", "field": "dport"}}]}}}]


def plan(network: str, cluster, endpoints: dict, local_networks) -> Table:
    """The table for this node.  cluster: policy.verdict.Cluster; endpoints: {ip: Pod} of
    every pod address known cluster-wide; local_networks: this node's pod subnet(s)."""
    table = Table(table_name(network))
    local = {ip: pod for ip, pod in endpoints.items() if any(ip in net for net in local_networks)}
    everyone = [Endpoint(ip, pod) for ip, pod in sorted(endpoints.items(), key=lambda i: (i[0].version, i[0]))]
    chains = {"forward": [("accept replies of allowed connections",
                           [{"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                       "right": ["established", "related"]}}, {"accept": None}])],
              "egress": [], "ingress": []}
    isolated = {"ingress": set(), "egress": set()}
    drops = {"ingress": [], "egress": []}
    for policy in cluster.policies:
        pid = policy_id(policy.ref)
        selected = [ip for ip, pod in local.items()
                    if pod.namespace == policy.namespace and policy.pod_selector.matches(pod.label_map)]
        for version in VERSIONS:
            table.sets[f"{pid}_sel{version}"] = (PROTO[version][1], False,
                                                 frozenset(str(ip) for ip in selected if ip.version == version))
        table.counters[f"{pid}_drop"] = policy.ref
        for direction, rules, letter in (("ingress", policy.ingress, "i"), ("egress", policy.egress, "e")):
            if direction.capitalize() not in policy.types:
                continue
            isolated[direction].update(selected)
            mine, theirs = ("daddr", "saddr") if direction == "ingress" else ("saddr", "daddr")
            for index, rule in enumerate(rules):
                peers_set = None
                if rule.peers:
                    peers_set = f"{pid}_{letter}{index}_"
                    nets = []
                    for peer in rule.peers:
                        if peer.ip_block is not None:
                            nets.extend(_block_networks(peer.ip_block))
                        else:
                            nets.extend(ipaddress.ip_network(e.ip) for e in everyone
                                        if cluster._peer_matches(policy, peer, e))
                    for version in VERSIONS:
                        table.sets[f"{peers_set}{version}"] = (PROTO[version][1], True, _networks(nets, version))
                for what, port_expr in _port_matches(rule.ports):
                    for version in VERSIONS:
                        expr = [_in_set(version, mine, f"{pid}_sel{version}")]
                        if peers_set:
                            expr.append(_in_set(version, theirs, f"{peers_set}{version}"))
                        chains[direction].append((f"{policy.ref} {direction}[{index}] {what} IPv{version}",
                                                  expr + port_expr + [{"return": None}]))
            for version in VERSIONS:
                drops[direction].append((f"{policy.ref} isolates IPv{version}",
                                         [_in_set(version, mine, f"{pid}_sel{version}"),
                                          {"counter": f"{pid}_drop"}]))
    for direction, letters in (("egress", "out"), ("ingress", "in")):
        mine = "saddr" if direction == "egress" else "daddr"
        for version in VERSIONS:
            table.sets[f"iso_{letters}{version}"] = (PROTO[version][1], False, frozenset(
                str(ip) for ip in isolated[direction] if ip.version == version))
            chains["forward"].append((f"{direction} of isolated pods IPv{version}",
                                      [_in_set(version, mine, f"iso_{letters}{version}"),
                                       {"jump": {"target": direction}}]))
        chains[direction].extend(drops[direction])
        for version in VERSIONS:
            table.dynamic[denied_set(direction, version)] = [PROTO[version][1], PROTO[version][1],
                                                             "inet_proto", "inet_service"]
            chains[direction].append((f"record denied {direction} flows IPv{version}",
                                      _record_denial(direction, version)))
        chains[direction].append((f"{direction} denied", [{"drop": None}]))
    table.chains = chains
    return table
