"""NetworkPolicy as one node's nftables table: pure planning (no kernel, no etcd).

The table (family inet, `weft_policy_<network>`) decides the first packet of every
connection forwarded to or from this node's pods; replies of allowed connections pass
by conntrack.  Rules grow with policies, elements with pods (O(pods + policies) rules,
never one rule per pod pair):

    chain egress_hook   filter hook forward priority 0:
        ct state established,related accept
        icmpv6 type {nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert,
                     nd-redirect} accept                 (ICMPv6 types 133-137)
        ip saddr @iso_out4 jump egress                    (and ip6)
    chain ingress_hook  filter hook forward priority 1: the same with daddr, iso_in, ingress
    chain egress        per policy P with type Egress: ip saddr @P_sel4 jump P_out;
                        then per P: ip saddr @P_sel4 counter P_drop, record the denied
                        flow with P's number (rate-limited per P, into denied_out4/6); drop
    chain P_out         one rule per (rule, peer kind, protocol): saddr in P_sel, daddr
                        in P_e<j>_pods (pods by selector anywhere in the cluster) or
                        P_e<j>_blocks (ipBlocks minus excepts, an interval set), the
                        rule's ports -> the policy's number into the ct mark
                        (flows/marks.py), accept (this hook is done; the ingress hook
                        still decides at priority 1)
    chain ingress, P_in the mirror image
    sets iso_in/iso_out local pods some policy isolates; P_sel local pods P selects

Only this node's pods are in the P_sel/iso sets: ingress is decided where the
destination lives, egress where the source lives, so same-node (bridged) and
cross-node (VXLAN, host-gw) flows meet the same rules.  Traffic the node itself sends
(kubelet probes) leaves through the output hook, which the table does not hook.

A policy's sets, chains and counter form its Fragment; a table is assembled from
fragments, so a policy change replans one fragment, and a pod change is a handful of
set elements (memberships()).  A named port is a set of `address . protocol . port`
of the pods defining that name (the fragment is marked `named` and replanned when
pods change).
"""

import ipaddress
import json
from dataclasses import dataclass, field

from ..digest import sha256
from .names import FAMILY, table_name  # noqa: F401 (the compiler's callers name them here)

VERSIONS = (4, 6)
PROTO = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
L4 = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
HOOKS = {"egress_hook": ("egress", 0), "ingress_hook": ("ingress", 1)}  # base chain -> (direction, priority)
DENIAL_PROTOCOLS = {"set": ["tcp", "udp", "sctp"]}
DENIED_RATE = 100       # new denied flows recorded per second at most
_LETTER = {"ingress": "i", "egress": "e"}
_SIDES = {"ingress": ("daddr", "saddr", "in"), "egress": ("saddr", "daddr", "out")}  # mine, theirs, suffix


def policy_id(ref: str) -> str:
    return "p" + sha256(ref.encode()).hexdigest()[:10]


@dataclass
class Table:
    """What the node's table must hold.  sets: name -> (nft type, interval?, frozenset of
    str (addresses, or networks in interval sets)); chains: name -> [(comment, expr)]
    (base chains are HOOKS); counters: {counter name: policy ref}; dynamic: name -> nft
    type of the sets the packet path fills (denied flows)."""
    name: str
    sets: dict = field(default_factory=dict)
    chains: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    dynamic: dict = field(default_factory=dict)
    signature: tuple = ()  # the fragments' (ref, id, types) the dispatch chains were made for


@dataclass
class Fragment:
    """One policy's part of the table.  named: it has a named port, whose elements
    (address . protocol . port of the pods defining the name) follow Pod objects, so
    the fragment is replanned when pods change."""
    ref: str
    pid: str
    types: frozenset
    sets: dict = field(default_factory=dict)
    chains: dict = field(default_factory=dict)
    named: bool = False
    number: int = 0  # the policy's number in ct marks and denied-flow elements (flows/marks.py)


def rules_key(rules) -> tuple:
    """A chain's rules as comparable data (comment and expression)."""
    return tuple((c, json.dumps(e, sort_keys=True)) for c, e in rules)


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
    """[(comment part, [expr])] one per protocol of the rule's numeric ports;
    [("any port", [])] when the rule has no ports (every port of every protocol)."""
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


def denied_set(direction: str, version: int) -> str:
    return f"denied_{_SIDES[direction][2]}{version}"


def isolates_any(table) -> bool:
    """Whether the table isolates any local pod (an iso_* set holds an address): only
    then can its rules record a denied flow."""
    return any(elements for name, (_, _, elements) in table.sets.items() if name.startswith("iso_"))


def _record_denial(direction: str, version: int, number: int) -> list:
    """Record the denied flow with the isolating policy's number (rate-bounded per policy)."""
    return [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": DENIAL_PROTOCOLS}},
            {"limit": {"rate": DENIED_RATE, "per": "second"}},
            {"set": {"op": "add", "set": f"@{denied_set(direction, version)}", "elem": {"concat": [
                _addr(version, "saddr"), _addr(version, "daddr"), {"meta": {"key": "l4proto"}},
                {"payload": {"protocol": "th", "field": "dport"}}, number]}}}]


def _mark_decided(direction: str, number: int) -> dict:
    """ct mark: this policy's number in the direction's field, the other bits kept."""
    from ..flows import marks  # not at import: the standalone ADD path loads this module

    mask, value = marks.mark_bits(direction, number)
    return {"mangle": {"key": {"ct": {"key": "mark"}}, "value": {"|": [
        {"&": [{"ct": {"key": "mark"}}, 0xFFFFFFFF ^ mask]}, value]}}}


def _directions(policy):
    for direction in ("ingress", "egress"):
        if direction.capitalize() in policy.types:
            yield direction, policy.ingress if direction == "ingress" else policy.egress


class _Members:
    """The pods a plan matches selectors against, prepared once per plan: label dicts
    built once, namespace labels looked up once (selectors run pods x policies times)."""

    def __init__(self, cluster, endpoints: dict, local_networks):
        self.cluster = cluster
        self.ns_labels = {}
        self.by_namespace = {}  # namespace -> [(ip, pod, labels, is_local)]
        for ip, pod in endpoints.items():
            if pod is None:
                continue
            is_local = any(ip in net for net in local_networks)
            self.by_namespace.setdefault(pod.namespace, []).append((ip, pod, pod.label_map, is_local))

    def peer_pods(self, policy, peer):
        """The prepared pods a selector peer of `policy` matches."""
        if peer.namespace_selector is None:
            spaces = [policy.namespace]
        else:
            spaces = [ns for ns in self.by_namespace if peer.namespace_selector.matches(self.namespace_labels(ns))]
        for ns in spaces:
            for entry in self.by_namespace.get(ns, ()):
                if peer.pod_selector is None or peer.pod_selector.matches(entry[2]):
                    yield entry

    def namespace_labels(self, name: str) -> dict:
        found = self.ns_labels.get(name)
        if found is None:
            found = self.ns_labels[name] = self.cluster.namespace_labels(name)
        return found

    def peer_matches(self, policy, peer, pod, labels) -> bool:
        """verdict.Cluster._peer_matches for a selector peer, on prepared labels."""
        if peer.namespace_selector is None:
            if pod.namespace != policy.namespace:
                return False
        elif not peer.namespace_selector.matches(self.namespace_labels(pod.namespace)):
            return False
        return peer.pod_selector is None or peer.pod_selector.matches(labels)

    def names(self, policy, pid, pod, labels, version, is_local) -> set:
        """The pod-address sets of `policy` an address of `pod` belongs in."""
        names = set()
        if is_local and pod.namespace == policy.namespace and policy.pod_selector.matches(labels):
            names.add(f"{pid}_sel{version}")
        for direction, rules in _directions(policy):
            for index, rule in enumerate(rules):
                if any(peer.ip_block is None and self.peer_matches(policy, peer, pod, labels) for peer in rule.peers):
                    names.add(f"{pid}_{_LETTER[direction]}{index}_pods{version}")
        return names


def memberships(cluster, ip, pod, is_local: bool) -> set:
    """The names of the pod-address sets `ip` (held by `pod`, None: no pod) belongs in:
    P_sel<v> of the policies selecting it (local pods only) and P_<l><j>_pods<v> of the
    rules whose selector peers match it.  The iso sets follow from P_sel (assemble)."""
    if pod is None:
        return set()
    members, labels = _Members(cluster, {}, ()), pod.label_map
    return set().union(*(members.names(p, policy_id(p.ref), pod, labels, ip.version, is_local)
                         for p in cluster.policies))


def policy_fragment(policy, cluster, endpoints: dict, local_networks, members=None,
                    policy_number: int = 0) -> Fragment:
    """The policy's sets (with their pod elements) and chains.  members: a _Members
    shared by the fragments of one plan; policy_number: the policy's number its accepting
    rules write into the connection's ct mark (flows/marks.py)."""
    members = members or _Members(cluster, endpoints, local_networks)
    pid = policy_id(policy.ref)
    frag = Fragment(policy.ref, pid, frozenset(policy.types), number=policy_number)
    for direction, rules in _directions(policy):
        mine, theirs, suffix = _SIDES[direction]
        chain = []
        for index, rule in enumerate(rules):
            base = f"{pid}_{_LETTER[direction]}{index}"
            kinds = []
            if any(p.ip_block is None for p in rule.peers):
                kinds.append("pods")
                for version in VERSIONS:
                    frag.sets[f"{base}_pods{version}"] = (PROTO[version][1], False, frozenset())
            blocks = [n for p in rule.peers if p.ip_block is not None for n in _block_networks(p.ip_block)]
            if blocks:
                kinds.append("blocks")
                for version in VERSIONS:
                    frag.sets[f"{base}_blocks{version}"] = (PROTO[version][1], True, _networks(blocks, version))
            named = sorted({(p.protocol, p.port) for p in rule.ports if isinstance(p.port, str)})
            port_variants = _port_matches([p for p in rule.ports if not isinstance(p.port, str)]) \
                if len(named) < len(rule.ports) else []
            if named:  # the destination pod's own port of that name (theirs for egress, ours for ingress)
                frag.named = True
                for version in VERSIONS:
                    np_name = f"{base}_np{version}"
                    found = set()
                    for entries in members.by_namespace.values():
                        for ip, pod, _, is_local in entries:
                            if ip.version != version or (direction == "ingress" and not is_local):
                                continue
                            for protocol, port_name in named:
                                number = pod.named_port(port_name, protocol)
                                if number is not None:
                                    found.add(f"{ip} . {L4[protocol]} . {number}")
                    frag.sets[np_name] = ([PROTO[version][1], "inet_proto", "inet_service"], False, frozenset(found))
                port_variants.append(("named port", "np"))
            for kind in kinds or [None]:
                for what, port_expr in port_variants or [("any port", [])]:
                    if port_expr == "np":
                        port_expr = None
                    for version in VERSIONS:
                        expr = [_in_set(version, mine, f"{pid}_sel{version}")]
                        if kind:
                            expr.append(_in_set(version, theirs, f"{base}_{kind}{version}"))
                        if port_expr is None:
                            port_expr_v = [{"match": {"op": "==", "left": {"concat": [
                                _addr(version, "daddr"), {"meta": {"key": "l4proto"}},
                                {"payload": {"protocol": "th", "field": "dport"}}]}, "right": f"@{base}_np{version}"}}]
                        else:
                            port_expr_v = port_expr
                        chain.append((f"{policy.ref} {direction}[{index}] {kind or 'any peer'} {what} IPv{version}",
                                      expr + port_expr_v + [_mark_decided(direction, policy_number), {"accept": None}]))
        frag.chains[f"{pid}_{suffix}"] = chain
    for version in VERSIONS:
        frag.sets[f"{pid}_sel{version}"] = (PROTO[version][1], False, frozenset())
    elements = {}
    for ip, pod, labels, is_local in members.by_namespace.get(policy.namespace, ()):
        if is_local and policy.pod_selector.matches(labels):
            elements.setdefault(f"{pid}_sel{ip.version}", set()).add(str(ip))
    for direction, rules in _directions(policy):
        for index, rule in enumerate(rules):
            base = f"{pid}_{_LETTER[direction]}{index}_pods"
            for peer in rule.peers:
                if peer.ip_block is None:
                    for ip, _, _, _ in members.peer_pods(policy, peer):
                        elements.setdefault(f"{base}{ip.version}", set()).add(str(ip))
    for name, found in elements.items():
        kind, interval, _ = frag.sets[name]
        frag.sets[name] = (kind, interval, frozenset(found))
    return frag


def assemble(network: str, fragments, previous=None) -> Table:
    """The whole table from the policies' fragments (in policy order).  previous: the
    table assembled last; its dispatch chains are reused (the very same lists) when the
    same policies with the same types are there, so comparing chains stays cheap."""
    table = Table(table_name(network))
    fragments = sorted(fragments, key=lambda f: f.ref)
    table.signature = tuple((f.ref, f.pid, f.types) for f in fragments)
    isolated = {"ingress": {4: set(), 6: set()}, "egress": {4: set(), 6: set()}}
    dispatch = {"ingress": [], "egress": []}
    drops = {"ingress": [], "egress": []}
    for frag in fragments:
        table.sets.update(frag.sets)
        table.chains.update(frag.chains)
        table.counters[f"{frag.pid}_drop"] = frag.ref
        for direction in ("ingress", "egress"):
            if direction.capitalize() not in frag.types:
                continue
            mine, _, suffix = _SIDES[direction]
            for version in VERSIONS:
                sel = f"{frag.pid}_sel{version}"
                isolated[direction][version].update(frag.sets[sel][2])
                dispatch[direction].append((f"{frag.ref} {direction} IPv{version}",
                                            [_in_set(version, mine, sel), {"jump": {"target": f"{frag.pid}_{suffix}"}}]))
                drops[direction].append((f"{frag.ref} isolates IPv{version}",
                                         [_in_set(version, mine, sel), {"counter": f"{frag.pid}_drop"},
                                          *_record_denial(direction, version, frag.number)]))
    established = ("accept replies of allowed connections",
                   [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
                    {"accept": None}])
    # IPv6 neighbour discovery is how pods find each other on the link, not a connection:
    # conntrack leaves it untracked, so without this an isolated pod could not be found
    neighbour_discovery = ("accept IPv6 neighbour discovery",
                           [{"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
                                       "right": {"set": ["nd-router-solicit", "nd-router-advert",
                                                         "nd-neighbor-solicit", "nd-neighbor-advert",
                                                         "nd-redirect"]}}},
                            {"accept": None}])
    for hook, (direction, _) in HOOKS.items():
        mine, _, suffix = _SIDES[direction]
        rules = [established, neighbour_discovery]
        for version in VERSIONS:
            table.sets[f"iso_{suffix}{version}"] = (PROTO[version][1], False,
                                                     frozenset(isolated[direction][version]))
            rules.append((f"{direction} of isolated pods IPv{version}",
                          [_in_set(version, mine, f"iso_{suffix}{version}"), {"jump": {"target": direction}}]))
        table.chains[hook] = rules
        chain = dispatch[direction] + drops[direction]
        for version in VERSIONS:
            table.dynamic[denied_set(direction, version)] = [PROTO[version][1], PROTO[version][1],
                                                             "inet_proto", "inet_service", "mark"]
        chain.append((f"{direction} denied", [{"drop": None}]))
        table.chains[direction] = chain
        if previous is not None and previous.signature == table.signature and previous.name == table.name:
            table.chains[hook], table.chains[direction] = previous.chains[hook], previous.chains[direction]
    return table


def plan(network: str, cluster, endpoints: dict, local_networks, numbers=None) -> Table:
    """The table for this node.  cluster: policy.verdict.Cluster; endpoints: {ip: Pod} of
    every pod address known cluster-wide; local_networks: this node's pod subnet(s);
    numbers: flows.marks.PolicyNumbers (None: every policy numbered 0)."""
    members = _Members(cluster, endpoints, local_networks)
    refs = [p.ref for p in cluster.policies]
    return assemble(network, [policy_fragment(p, cluster, endpoints, local_networks, members,
                                              numbers.number(p.ref, refs) if numbers else 0)
                              for p in cluster.policies])


def prepare(cluster, endpoints: dict, local_networks):
    """What the fragments of one plan share (pass to policy_fragment)."""
    return _Members(cluster, endpoints, local_networks)
