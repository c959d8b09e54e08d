"""The control-plane guard of one network: pods may not reach etcd or weftd (through nft.py).

One table per network, `inet weft_control_<name>`, kept by weftd's control-guard
controller (agent/controllers/control_guard.py).  It describes the node, not its pods:

    sets pods4/pods6        this node's pod subnet(s): the sources of forwarded pod traffic
    sets cluster4/cluster6  the network(s): pod sources arriving at this node's own
                            sockets (a remote pod reaches the node's pod-network
                            addresses through the overlay with its own address)
    sets allowed4/allowed6  addresses of the local pods named in ControlPlaneAccess
    sets etcd4/etcd6        address . TCP port of every etcd endpoint the agent uses
    set  ports              protocol . port weftd listens on (metrics; the backend's UDP port)
    sets peers4/peers6      the underlay addresses of the network's other nodes
    sets knocked4/knocked6  dynamic (timeout 60 s): src . dst . protocol . port of refused flows
    counter refused         every packet refused

    chain input    filter hook input, priority -10:
        iifname "lo" return                              (the node's own traffic)
        ip saddr @allowed4 return                        (and ip6)
        ip saddr @cluster4 ip daddr . tcp dport @etcd4 jump refuse
        ip saddr @cluster4 meta l4proto . th dport @ports jump refuse
    chain forward  filter hook forward, priority -10 (after DNAT: a Service VIP that
                   leads to etcd is caught too):
        ip saddr @allowed4 return
        ip saddr @pods4 ip daddr . tcp dport @etcd4 jump refuse
        ip saddr @pods4 ip daddr @peers4 meta l4proto . th dport @ports jump refuse
    chain refuse:
        meta nfproto ipv4 limit rate 100/second add @knocked4 { ip saddr . ip daddr . meta l4proto . th dport }
        (and ipv6)
        counter name refused drop

The forward rule towards peers is what keeps a pod from sending another node's VXLAN
port a datagram (masqueraded as its own node, so the receiver cannot tell) that
carries a frame with any inner source, and from reaching other nodes' weftd the same
way.  The drop is its own rule after the recording rules: a full knocked set (or the
rate limit) ends only the recording rule, never the drop.

ensure() lists the table once; when only set elements differ it adds and deletes
those elements in one transaction, otherwise (table, chain, rule, counter or set
definition missing or different) it rebuilds the table in one transaction (add,
delete, add: no moment without the guard).  Pods are identified by source address:
source validation (datapath/source_guard.py) guarantees a pod sends as itself.
"""

import ipaddress
import re
from dataclasses import dataclass

from . import nft

FAMILY = "inet"
PRIORITY = -10
KNOCKED_TIMEOUT = 60   # seconds a refused flow stays recorded
KNOCKED_SIZE = 1024
KNOCKED_RATE = 100     # refused packets recorded per second at most (the drop is not limited)
KNOCKED_BURST = 5
COUNTER = "refused"
_PROTO = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
VERSIONS = (4, 6)
ELEMENT_SETS = ("pods", "cluster", "allowed", "etcd", "peers")  # + the version; and "ports"


def table_name(network: str) -> str:
    return "weft_control_" + re.sub(r"[^A-Za-z0-9_]", "_", network)


@dataclass(frozen=True)
class ControlGuard:
    """What the table must say.  Build it with guard() so the tuples are normalised."""
    network: str
    pods: tuple = ()      # ip_network: this node's pod subnet(s)
    cluster: tuple = ()   # ip_network: the network(s)
    allowed: tuple = ()   # ip_address: local pods excepted
    etcd: tuple = ()      # (ip_address, TCP port)
    ports: tuple = ()     # (protocol "tcp"/"udp", port): weftd's listening ports
    peers: tuple = ()     # ip_address: the other nodes' underlay addresses

    @property
    def table(self) -> str:
        return table_name(self.network)


def guard(network: str, pods=(), cluster=(), allowed=(), etcd=(), ports=(), peers=()) -> ControlGuard:
    """A ControlGuard with sorted, de-duplicated members (so equal inputs compare equal)."""
    def address(a):
        return a if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(a)

    def key(item):  # by number: comparing ipaddress objects is slow with 5,000 peers
        if hasattr(item, "network_address"):
            return item.version, int(item.network_address), item.prefixlen
        return item.version, int(item), 0

    def order(items):
        return tuple(sorted(set(items), key=key))

    return ControlGuard(
        network, pods=order(ipaddress.ip_network(n, strict=False) for n in pods),
        cluster=order(ipaddress.ip_network(n, strict=False) for n in cluster),
        allowed=order(address(a) for a in allowed),
        etcd=tuple(sorted({(address(a), int(p)) for a, p in etcd}, key=lambda e: (e[0].version, int(e[0]), e[1]))),
        ports=tuple(sorted({(str(proto), int(port)) for proto, port in ports})),
        peers=order(address(a) for a in peers))


Outcome = nft.Outcome  # action: "unchanged", "created", "updated" (elements only), "rebuilt"


# -- what the table holds, as nft's JSON and as comparable text --------------------------------
def _collapse(networks, version):
    return sorted(ipaddress.collapse_addresses(n for n in networks if n.version == version))


def wanted_elements(spec: ControlGuard) -> dict:
    """{set name: sorted element texts as nft.sets_of() spells them} for every static set."""
    out = {}
    for version in VERSIONS:
        out[f"pods{version}"] = [str(n) if n.prefixlen < n.max_prefixlen else str(n.network_address)
                                 for n in _collapse(spec.pods, version)]
        out[f"cluster{version}"] = [str(n) if n.prefixlen < n.max_prefixlen else str(n.network_address)
                                    for n in _collapse(spec.cluster, version)]
        out[f"allowed{version}"] = sorted(str(a) for a in spec.allowed if a.version == version)
        out[f"etcd{version}"] = sorted(f"{a} . {p}" for a, p in spec.etcd if a.version == version)
        out[f"peers{version}"] = sorted(str(a) for a in spec.peers if a.version == version)
    out["ports"] = sorted(f"{proto} . {port}" for proto, port in spec.ports)
    return out


def _set_types() -> dict:
    """{set name: (nft type, flags, extra)} of every set."""
    out = {}
    for version in VERSIONS:
        addr = _PROTO[version][1]
        out[f"pods{version}"] = (addr, ["interval"], {})
        out[f"cluster{version}"] = (addr, ["interval"], {})
        out[f"allowed{version}"] = (addr, [], {})
        out[f"etcd{version}"] = ([addr, "inet_service"], [], {})
        out[f"peers{version}"] = (addr, [], {})
        out[f"knocked{version}"] = ([addr, addr, "inet_proto", "inet_service"], ["timeout"],
                                    {"timeout": KNOCKED_TIMEOUT, "size": KNOCKED_SIZE})
    out["ports"] = (["inet_proto", "inet_service"], [], {})
    return out


def _json_element(text: str):
    if " . " in text:
        parts = text.split(" . ")
        return {"concat": [int(p) if p.isdigit() else p for p in parts]}
    if "/" in text:
        addr, _, length = text.partition("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    return text


def _payload(version, field_name):
    return {"payload": {"protocol": _PROTO[version][0], "field": field_name}}


def _in(left, set_name):
    return {"match": {"op": "==", "left": left, "right": f"@{set_name}"}}


_L4_DPORT = [{"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]
_TCP_DPORT = {"payload": {"protocol": "tcp", "field": "dport"}}
_REFUSE = {"jump": {"target": "refuse"}}


def _rules() -> dict:
    """{chain: [(comment, expr)]} of the three chains."""
    loopback = ("the node's own traffic", [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}},
                                                      "right": "lo"}}, {"return": None}])
    allowed = [(f"ControlPlaneAccess pods IPv{v}", [_in(_payload(v, "saddr"), f"allowed{v}"), {"return": None}])
               for v in VERSIONS]
    input_rules, forward_rules = [loopback, *allowed], list(allowed)
    for v in VERSIONS:
        etcd = {"concat": [_payload(v, "daddr"), _TCP_DPORT]}
        input_rules.append((f"pods to etcd IPv{v}", [_in(_payload(v, "saddr"), f"cluster{v}"),
                                                     _in(etcd, f"etcd{v}"), _REFUSE]))
        forward_rules.append((f"pods to etcd IPv{v}", [_in(_payload(v, "saddr"), f"pods{v}"),
                                                       _in(etcd, f"etcd{v}"), _REFUSE]))
    for v in VERSIONS:
        input_rules.append((f"pods to weftd IPv{v}", [_in(_payload(v, "saddr"), f"cluster{v}"),
                                                      _in({"concat": _L4_DPORT}, "ports"), _REFUSE]))
        forward_rules.append((f"pods to other nodes' weftd and overlay port IPv{v}", [
            _in(_payload(v, "saddr"), f"pods{v}"), _in(_payload(v, "daddr"), f"peers{v}"),
            _in({"concat": _L4_DPORT}, "ports"), _REFUSE]))
    refuse = []
    for v in VERSIONS:
        refuse.append((f"record refused flows IPv{v}", [
            {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": f"ipv{v}"}},
            {"limit": {"rate": KNOCKED_RATE, "burst": KNOCKED_BURST, "per": "second"}},
            {"set": {"op": "add", "set": f"@knocked{v}", "elem": {"concat": [
                _payload(v, "saddr"), _payload(v, "daddr"), *_L4_DPORT]}}}]))
    refuse.append(("refuse", [{"counter": COUNTER}, {"drop": None}]))
    return {"input": input_rules, "forward": forward_rules, "refuse": refuse}


_HOOKED = {"input": "input", "forward": "forward"}


def _create_commands(table: str, elements: dict) -> list:
    commands = [{"add": {"table": {"family": FAMILY, "name": table}}}]
    for name, (kind, flags, extra) in _set_types().items():
        nft_set = {"family": FAMILY, "table": table, "name": name, "type": kind, **extra}
        if flags:
            nft_set["flags"] = list(flags)
        if elements.get(name):
            nft_set["elem"] = [_json_element(e) for e in elements[name]]
        commands.append({"add": {"set": nft_set}})
    commands.append({"add": {"counter": {"family": FAMILY, "table": table, "name": COUNTER}}})
    for chain in ("refuse", "input", "forward"):  # the jump target first
        spec = {"family": FAMILY, "table": table, "name": chain}
        if chain in _HOOKED:
            spec.update(type="filter", hook=_HOOKED[chain], prio=PRIORITY, policy="accept")
        commands.append({"add": {"chain": spec}})
    for chain, rules in _rules().items():
        for comment, expr in rules:
            commands.append({"add": {"rule": {"family": FAMILY, "table": table, "chain": chain,
                                              "comment": comment, "expr": expr}}})
    return commands


# -- comparing with the kernel ------------------------------------------------------------
def _normalised(name: str, values: list) -> list:
    """Element texts of a listing, spelled as wanted_elements() spells them."""
    if name.startswith(("pods", "cluster")):
        nets = []
        for value in values:
            try:
                nets.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                return sorted(values)  # a range or something weft never writes: differs
        return [str(n) if n.prefixlen < n.max_prefixlen else str(n.network_address)
                for n in sorted(ipaddress.collapse_addresses(nets))]
    return sorted(values)


def _shape_problems(objects: list) -> list:
    """What in the table, apart from set elements, differs from the guard's shape."""
    problems = []
    present_sets = {item["set"]["name"]: item["set"] for item in objects if "set" in item}
    for name, (kind, flags, extra) in _set_types().items():
        found = present_sets.get(name)
        if found is None:
            problems.append(f"set {name} missing")
            continue
        have = (found.get("type"), sorted(found.get("flags", [])), {k: found.get(k) for k in extra})
        if have != (kind, sorted(flags), extra):
            problems.append(f"set {name} is not of type {kind} with flags {flags or 'none'}")
    extra_sets = sorted(set(present_sets) - set(_set_types()))
    if extra_sets:
        problems.append(f"unexpected set(s) {', '.join(extra_sets)}")
    if not any(item.get("counter", {}).get("name") == COUNTER for item in objects):
        problems.append(f"counter {COUNTER} missing")
    chains = nft.chains_of(objects)
    wanted_rules = _rules()
    for chain, rules in wanted_rules.items():
        found = chains.get(chain)
        if found is None:
            problems.append(f"chain {chain} missing")
            continue
        hook = _HOOKED.get(chain)
        have = (found.get("type"), found.get("hook"), found.get("prio"), found.get("policy"))
        if have != ((("filter", hook, PRIORITY, "accept")) if hook else (None, None, None, None)):
            problems.append(f"chain {chain} is not " + (f"a filter {hook} chain at priority {PRIORITY}"
                                                        if hook else "a regular chain"))
        present = [(r.get("comment"), r.get("expr")) for r in nft.rules_of(objects, chain)]
        if present != rules:
            missing = [c for c, _ in rules if c not in [p[0] for p in present]]
            problems.append(f"chain {chain} holds {len(present)} rule(s), not its {len(rules)}"
                            + (f" (missing: {', '.join(missing)})" if missing else ""))
    extra_chains = sorted(set(chains) - set(wanted_rules))
    if extra_chains:
        problems.append(f"unexpected chain(s) {', '.join(extra_chains)}")
    return problems


def compare(spec: ControlGuard):
    """(objects or None, shape problems, {set: (to add, to remove)}) of the table now."""
    objects = nft.list_table(FAMILY, spec.table)
    if objects is None:
        return None, ["table missing"], {}
    present = {name: _normalised(name, [v for v, _ in values]) for name, values in nft.sets_of(objects).items()}
    deltas = {}
    for name, members in wanted_elements(spec).items():
        have = present.get(name)
        if have is None:
            continue  # a shape problem already
        add, remove = sorted(set(members) - set(have)), sorted(set(have) - set(members))
        if add or remove:
            deltas[name] = (add, remove)
    return objects, _shape_problems(objects), deltas


def _element_commands(table: str, deltas: dict) -> list:
    commands = []
    for verb, index in (("delete", 1), ("add", 0)):
        for name, change in sorted(deltas.items()):
            if change[index]:
                commands.append({verb: {"element": {"family": FAMILY, "table": table, "name": name,
                                                    "elem": [_json_element(e) for e in change[index]]}}})
    return commands


def _describe(deltas: dict) -> list:
    out = []
    for name, (add, remove) in sorted(deltas.items()):
        parts = ([f"+{', '.join(add)}"] if add else []) + ([f"-{', '.join(remove)}"] if remove else [])
        out.append(f"set {name} {' '.join(parts)}")
    return out


def ensure(spec: ControlGuard) -> Outcome:
    """Make the table say what spec says, atomically; one listing when nothing differs."""
    objects, problems, deltas = compare(spec)
    if not problems and not deltas:
        return Outcome("unchanged")
    if not problems:
        try:
            nft.run(_element_commands(spec.table, deltas))
            return Outcome("updated", _describe(deltas))
        except nft.NftError:
            problems = ["set elements could not be changed in place"]  # raced: rebuild
    table = {"table": {"family": FAMILY, "name": spec.table}}
    # add (a no-op when it exists) + delete + the whole table, in one transaction
    nft.run([{"add": table}, {"delete": table}, *_create_commands(spec.table, wanted_elements(spec))])
    return Outcome("created" if objects is None else "rebuilt", problems + _describe(deltas))


def remove(network: str) -> bool:
    """Delete the network's table; False when there was none."""
    return nft.remove_table(FAMILY, table_name(network))


# -- what the packet path recorded ----------------------------------------------------------
def refused(network: str):
    """Packets the table refused so far, or None without the table.  libnftables reads the
    whole ruleset (every set's elements) to answer this: ~10 ms with 5,000 peers, where
    knocked() costs 0.1 ms whatever the size; read it when knocked() found something."""
    try:
        objects = nft.run([{"list": {"counter": {"family": FAMILY, "table": table_name(network),
                                                 "name": COUNTER}}}])
    except nft.NftError as exc:
        if "No such file or directory" in str(exc):
            return None
        raise
    for item in objects:
        if "counter" in item:
            return int(item["counter"].get("packets", 0))
    return None


def knocked(network: str, versions=VERSIONS) -> list:
    """[((src, dst, protocol, port), seconds until it expires)] of the refused flows recorded
    (one listing of each family's set: only that set is read)."""
    table = table_name(network)
    objects = []
    for version in versions:
        try:
            objects += nft.run([{"list": {"set": {"family": FAMILY, "table": table, "name": f"knocked{version}"}}}])
        except nft.NftError as exc:
            if "No such file or directory" not in str(exc):
                raise
    out = []
    for item in objects:
        for elem in (item.get("set") or {}).get("elem", []):
            inner = elem.get("elem", {}) if isinstance(elem, dict) else {}
            value = inner.get("val")
            parts = value.get("concat") if isinstance(value, dict) else None
            if isinstance(parts, list) and len(parts) == 4:
                out.append((tuple(parts), inner.get("expires", 0)))
    return out
