"""The node's NetworkPolicy table in the kernel, through nft.py (policy/compile.py plans it).

apply() makes the kernel hold a planned Table: when only set elements changed since
the last apply (pods came, went or changed labels) it adds and deletes those elements;
otherwise (policies changed, or the table is missing) it rebuilds the table in one
transaction (add, delete, add: there is never a moment with half a table, and the
conntrack entries of allowed connections are untouched).  inspect() compares the
kernel with a plan (the reconcile); counters() reads the per-policy drop counters.
"""

import ipaddress

from ..policy.compile import HOOKS, rules_key
from . import nft

DENIED_TIMEOUT = 60   # seconds a denied flow stays recorded in its set
DENIED_SIZE = 4096
FAMILY = "inet"


def _element(value: str, interval: bool):
    if " . " in value:  # address . protocol . port (named ports)
        address, protocol, port = value.split(" . ")
        return {"concat": [address, protocol, int(port)]}
    if interval and "/" in value:
        addr, _, length = value.partition("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    return value


def _table_obj(name: str) -> dict:
    return {"family": FAMILY, "name": name}


def _set_command(table_name: str, name: str, kind, interval: bool, elements) -> dict:
    spec = {"family": FAMILY, "table": table_name, "name": name, "type": kind}
    if interval:
        spec["flags"] = ["interval"]
    if elements:
        spec["elem"] = [_element(e, interval) for e in sorted(elements)]
    return {"add": {"set": spec}}


def _chain_command(table_name: str, chain: str) -> dict:
    spec = {"family": FAMILY, "table": table_name, "name": chain}
    if chain in HOOKS:
        spec.update(type="filter", hook="forward", prio=HOOKS[chain][1], policy="accept")
    return {"add": {"chain": spec}}


def _rule_commands(table_name: str, chain: str, rules) -> list:
    return [{"add": {"rule": {"family": FAMILY, "table": table_name, "chain": chain, "comment": comment[:127],
                              "expr": expr}}} for comment, expr in rules]


def _dynamic_command(table_name: str, name: str, kind) -> dict:
    return {"add": {"set": {"family": FAMILY, "table": table_name, "name": name, "type": kind,
                            "flags": ["timeout"], "timeout": DENIED_TIMEOUT, "size": DENIED_SIZE}}}


def _build(table) -> list:
    t = table.name
    commands = [{"add": {"table": _table_obj(t)}}]
    commands += [_set_command(t, n, k, i, e) for n, (k, i, e) in sorted(table.sets.items())]
    commands += [_dynamic_command(t, n, k) for n, k in sorted(table.dynamic.items())]
    commands += [{"add": {"counter": {"family": FAMILY, "table": t, "name": n}}} for n in sorted(table.counters)]
    commands += [_chain_command(t, c) for c in table.chains]
    for chain, rules in table.chains.items():
        commands += _rule_commands(t, chain, rules)
    return commands


def element_commands(table_name: str, kinds: dict, adds: dict, removes: dict) -> list:
    """Element changes: adds/removes {set name: iterable of str}; kinds {set name: interval?}."""
    commands = []
    for verb, changes in (("delete", removes), ("add", adds)):
        for name, values in sorted(changes.items()):
            values = sorted(values)
            if values:
                commands.append({verb: {"element": {"family": FAMILY, "table": table_name, "name": name,
                                                     "elem": [_element(v, kinds[name]) for v in values]}}})
    return commands


def _changes(table, previous) -> list:
    """The commands that turn `previous` (what the kernel holds) into `table`: new sets,
    counters and chains first, changed chains flushed and refilled, then what went, then
    element changes of the sets both hold."""
    t, commands, late = table.name, [], []
    new_sets, old_sets = set(table.sets), set(previous.sets)
    for name in sorted(new_sets - old_sets):
        commands.append(_set_command(t, name, *table.sets[name]))
    for name in sorted(set(table.dynamic) - set(previous.dynamic)):
        commands.append(_dynamic_command(t, name, table.dynamic[name]))
    for name in sorted(set(table.counters) - set(previous.counters)):
        commands.append({"add": {"counter": {"family": FAMILY, "table": t, "name": name}}})
    for chain in table.chains:
        if chain not in previous.chains:
            commands.append(_chain_command(t, chain))
    for chain, rules in table.chains.items():
        if chain in previous.chains:
            before = previous.chains[chain]
            if rules is before or rules_key(rules) == rules_key(before):
                continue
            commands.append({"flush": {"chain": {"family": FAMILY, "table": t, "name": chain}}})
        commands += _rule_commands(t, chain, rules)
    for chain in previous.chains:
        if chain not in table.chains:
            late.append({"flush": {"chain": {"family": FAMILY, "table": t, "name": chain}}})
            late.append({"delete": {"chain": {"family": FAMILY, "table": t, "name": chain}}})
    for name in sorted(old_sets - new_sets) + sorted(set(previous.dynamic) - set(table.dynamic)):
        late.append({"delete": {"set": {"family": FAMILY, "table": t, "name": name}}})
    for name in sorted(set(previous.counters) - set(table.counters)):
        late.append({"delete": {"counter": {"family": FAMILY, "table": t, "name": name}}})
    adds, removes, kinds = {}, {}, {}
    for name in new_sets & old_sets:
        kind, interval, elements = table.sets[name]
        before = previous.sets[name]
        if before is table.sets[name] or before[2] is elements:  # the same fragment's set: unchanged
            continue
        if before[:2] != (kind, interval):  # never planned; handled for safety: replace the set
            late.append({"delete": {"set": {"family": FAMILY, "table": t, "name": name}}})
            late.append(_set_command(t, name, kind, interval, elements))
            continue
        kinds[name] = interval
        adds[name], removes[name] = elements - before[2], before[2] - elements
    return commands + late + element_commands(t, kinds, adds, removes)


def run(commands: list) -> None:
    """Run element_commands() (one transaction)."""
    nft.run(commands)


def apply(table, previous=None) -> str:
    """Program `table`; previous: the Table the kernel holds (None: unknown, rebuild).
    Returns "unchanged", "changed" or "rebuilt"; always one transaction."""
    if previous is not None:
        commands = _changes(table, previous)
        if not commands:
            return "unchanged"
        nft.run(commands)
        return "changed"
    nft.run([{"add": {"table": _table_obj(table.name)}}, {"delete": {"table": _table_obj(table.name)}},
             *_build(table)])
    return "rebuilt"


def _normal(values, interval: bool) -> frozenset:
    """nft's listing of a set as the plan writes it: interval sets as collapsed networks,
    /32 and /128 bare."""
    if not interval:
        return frozenset(value for value, _ in values)
    nets = []
    for value, _ in values:
        if "-" in value:
            low, _, high = value.partition("-")
            nets.extend(ipaddress.summarize_address_range(ipaddress.ip_address(low), ipaddress.ip_address(high)))
        else:
            nets.append(ipaddress.ip_network(value, strict=False))
    out = set()
    for version in (4, 6):
        for net in ipaddress.collapse_addresses(n for n in nets if n.version == version):
            out.add(str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net))
    return frozenset(out)


def inspect(table) -> list:
    """What in the kernel differs from `table` ([] when nothing)."""
    objects = nft.list_table(FAMILY, table.name)
    if objects is None:
        return [f"table {FAMILY} {table.name} missing"]
    problems = []
    present = nft.sets_of(objects)
    for name, (_, interval, elements) in sorted(table.sets.items()):
        if name not in present:
            problems.append(f"set {name} missing")
        elif _normal(present[name], interval) != elements:
            problems.append(f"set {name} holds {len(present[name])} element(s), wanted {len(elements)}")
    missing = sorted(set(table.dynamic) - set(present))
    if missing:
        problems.append(f"set(s) {', '.join(missing)} missing")
    extra = sorted(set(present) - set(table.sets) - set(table.dynamic))
    if extra:
        problems.append(f"unexpected set(s) {', '.join(extra)}")
    chains = nft.chains_of(objects)
    for chain, rules in table.chains.items():
        if chain not in chains:
            problems.append(f"chain {chain} missing")
            continue
        have = [r.get("comment") for r in nft.rules_of(objects, chain)]
        if have != [c[:127] for c, _ in rules]:
            problems.append(f"chain {chain} holds {len(have)} rule(s), wanted {len(rules)}")
    counters = {item["counter"]["name"] for item in objects if "counter" in item}
    missing = sorted(set(table.counters) - counters)
    if missing:
        problems.append(f"counter(s) {', '.join(missing)} missing")
    return problems


def counters(name: str) -> dict:
    """{counter name: packets} of the table (empty when it is missing)."""
    objects = nft.list_table(FAMILY, name) or []
    return {item["counter"]["name"]: int(item["counter"].get("packets", 0)) for item in objects
            if "counter" in item}


def denied_flows(table) -> list:
    """[(set name, (src, dst, protocol, port, policy number), seconds until it expires)]
    recorded in the table's dynamic sets (flows/marks.py: the number of the isolating
    policy whose drop rule recorded it)."""
    objects = []
    for name in sorted(table.dynamic):  # only these sets: listing the whole table costs 100 ms at scale
        try:
            objects += nft.run([{"list": {"set": {"family": FAMILY, "table": table.name, "name": name}}}])
        except nft.NftError as exc:
            if "No such file or directory" not in str(exc):
                raise
    out = []
    for item in objects:
        nft_set = item.get("set")
        if not nft_set or nft_set.get("name") not in table.dynamic:
            continue
        for elem in nft_set.get("elem", []):
            inner = elem.get("elem", {}) if isinstance(elem, dict) else {}
            values = (inner.get("val") or {}).get("concat") if isinstance(inner.get("val"), dict) else None
            if isinstance(values, list) and len(values) == 5:
                out.append((nft_set["name"], tuple(values), inner.get("expires", 0)))
    return out


def remove(name: str) -> bool:
    return nft.remove_table(FAMILY, name)
