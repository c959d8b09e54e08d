"""Node-wide IP masquerade for one network, as flannel does it (through nft.py).

One table per network, `inet weft_<name>`, describing the node, not its pods:

    set src4/src6       the sources masqueraded: the node's pod subnet(s)
    set nomasq4/nomasq6 destinations never masqueraded: the cluster network(s), multicast
    chain postrouting   nat, srcnat priority:
        ip  saddr @src4 ip  daddr != @nomasq4 masquerade fully-random
        ip6 saddr @src6 ip6 daddr != @nomasq6 masquerade fully-random

Pod-to-pod traffic (same node or across nodes) keeps its source address; only traffic
leaving the cluster network is masqueraded.  Nothing in the table changes per pod,
so ADD and DEL never touch nftables when weftd serves the node: the agent's
masquerade controller creates the table with the lease, repairs it at every
reconcile and removes it with the network.  Without an agent, ADD calls ensure()
in additive mode: the first ADD on the node creates the table, later ones only read it.

The table is rebuilt as one transaction (add, delete, add), so there is never a moment
without masquerade, and a table of the same name that is not in this shape — in
particular the per-pod table of weft before issue 14 (sets pods4/pods6 holding one
element per attachment) — is replaced by the node-wide one: its pods are covered by
the subnet in src4/src6.
"""

import ipaddress
import re
from collections import namedtuple

from . import nft

FAMILY = "inet"
CHAIN = "postrouting"
PRIORITY_SRCNAT = 100
MULTICAST = {4: ipaddress.ip_network("224.0.0.0/4"), 6: ipaddress.ip_network("ff00::/8")}
_PROTO = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
LEGACY_SETS = ("pods4", "pods6")  # the per-pod table of weft before issue 14


def table_name(network: str) -> str:
    return "weft_" + re.sub(r"[^A-Za-z0-9_]", "_", network)


def _rule_comment(version: int) -> str:
    return f"weft: masquerade pod traffic leaving the cluster network (IPv{version})"


class Masquerade(namedtuple("Masquerade", "network sources keep", defaults=((), ()))):
    """What the table must say: masquerade `sources` (ip_network) towards anything
    outside `keep` (ip_network: the cluster network(s); multicast is added)."""

    __slots__ = ()

    @property
    def table(self) -> str:
        return table_name(self.network)


Outcome = nft.Outcome  # action: "unchanged", "created", "repaired", "migrated", "extended"


def _collapse(networks, version: int) -> list:
    return sorted(ipaddress.collapse_addresses(n for n in networks if n.version == version))


def _element(net) -> object:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _wanted_sets(sources, keep) -> dict:
    out = {}
    for version in (4, 6):
        out[f"src{version}"] = _collapse(sources, version)
        out[f"nomasq{version}"] = _collapse([*keep, MULTICAST[version]], version)
    return out


def _rule_expr(version: int) -> list:
    proto = _PROTO[version][0]
    return [{"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                       "right": f"@src{version}"}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": proto, "field": "daddr"}},
                       "right": f"@nomasq{version}"}},
            {"masquerade": {"flags": "fully-random"}}]


def _create_commands(table: str, sets: dict) -> list:
    commands = [{"add": {"table": {"family": FAMILY, "name": table}}}]
    for name, members in sets.items():
        version = int(name[-1])
        nft_set = {"family": FAMILY, "table": table, "name": name, "type": _PROTO[version][1],
                   "flags": ["interval"]}
        if members:
            nft_set["elem"] = [_element(n) for n in members]
        commands.append({"add": {"set": nft_set}})
    commands.append({"add": {"chain": {"family": FAMILY, "table": table, "name": CHAIN, "type": "nat",
                                       "hook": "postrouting", "prio": PRIORITY_SRCNAT, "policy": "accept"}}})
    for version in (4, 6):
        commands.append({"add": {"rule": {"family": FAMILY, "table": table, "chain": CHAIN,
                                          "comment": _rule_comment(version), "expr": _rule_expr(version)}}})
    return commands


def _present_sets(objects: list) -> dict:
    out = {}
    for name, elements in nft.sets_of(objects).items():
        nets = []
        for value, _ in elements:
            try:
                nets.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                continue  # a range or something weft never writes: differs from the wanted list
        out[name] = sorted(ipaddress.collapse_addresses(nets)) if nets else []
    return out


def _shape_problems(objects: list) -> list:
    """What in the table's chain/rules differs from the node-wide shape ([] when none)."""
    problems = []
    chain = nft.chains_of(objects).get(CHAIN)
    if chain is None:
        return [f"chain {CHAIN} missing"]
    if (chain.get("type"), chain.get("hook"), chain.get("prio")) != ("nat", "postrouting", PRIORITY_SRCNAT):
        problems.append(f"chain {CHAIN} is not a nat postrouting chain at srcnat priority")
    rules = [(r.get("comment"), r.get("expr")) for r in nft.rules_of(objects, CHAIN)]
    wanted = [(_rule_comment(v), _rule_expr(v)) for v in (4, 6)]
    if rules != wanted:
        problems.append(f"chain {CHAIN} holds {len(rules)} rule(s), not the {len(wanted)} masquerade rules")
    extra = sorted(set(nft.chains_of(objects)) - {CHAIN})
    if extra:
        problems.append(f"unexpected chain(s) {', '.join(extra)}")
    return problems


def compare(spec: Masquerade, exact: bool = True):
    """(objects or None, wanted sets, differences) for the table as it is now.
    exact=False (standalone): sources/destinations already present are kept."""
    objects = nft.list_table(FAMILY, spec.table)
    if objects is None:
        return None, _wanted_sets(spec.sources, spec.keep), ["table missing"]
    present = _present_sets(objects)
    if any(name in present for name in LEGACY_SETS):
        return objects, _wanted_sets(spec.sources, spec.keep), ["per-pod table of an older weft"]
    sources, keep = list(spec.sources), list(spec.keep)
    if not exact:
        for version in (4, 6):
            sources += present.get(f"src{version}", [])
            keep += present.get(f"nomasq{version}", [])
    wanted = _wanted_sets(sources, keep)
    differences = _shape_problems(objects)
    for name, members in wanted.items():
        have = present.get(name)
        if have is None:
            differences.append(f"set {name} missing")
        elif have != members:
            differences.append(f"set {name} holds {', '.join(map(str, have)) or 'nothing'}, "
                               f"wanted {', '.join(map(str, members)) or 'nothing'}")
    return objects, wanted, differences


def ensure(spec: Masquerade, exact: bool = True) -> Outcome:
    """Make the table say what spec says, atomically; one listing when nothing differs."""
    objects, wanted, differences = compare(spec, exact)
    if not differences:
        return Outcome("unchanged")
    # add (a no-op when it exists) + delete + the whole table, in one transaction: the
    # result is exactly one copy even when another process created it since our listing
    table = {"table": {"family": FAMILY, "name": spec.table}}
    commands = [{"add": table}, {"delete": table}, *_create_commands(spec.table, wanted)]
    if objects is None:
        action = "created"
    else:
        action = "migrated" if differences == ["per-pod table of an older weft"] else \
            ("extended" if not exact else "repaired")
    nft.run(commands)
    return Outcome(action, differences)


def remove(network: str) -> bool:
    """Delete the network's table; False when there was none."""
    return nft.remove_table(FAMILY, table_name(network))
