"""Source validation: a pod sends only as itself (its MAC, its addresses), through nft.py.

One table per network, `bridge weft_source_<name>`.  Why the bridge family: its
prerouting hook sees every frame a pod sends into the node's bridge — ARP and anything
that is not IP included — before the bridge forwards it to another pod and before the
node routes it, in one base chain for all of the network's ports.  The netdev ingress
hook would need a base chain per host veth (a table change per pod instead of set
elements) and sees nothing that the bridge hook does not.

    set ports   ifname                   the ports under validation
    set mac     ifname . ether_addr      each port's pod MAC
    set addr4   ifname . ipv4_addr       each port's pod addresses
    set addr6   ifname . ipv6_addr
    set nd6     ifname . 128-bit integer the IPv6 addresses a port may claim in a
                                         neighbour advertisement (the target field
                                         has no named type in nftables 1.0.6)
    counter spoofed                      every frame dropped here
    sets seen_* (timeout 60 s, 1024)     what was dropped, per port, for the journal
    chain prerouting  filter, bridge prerouting, priority -400 (ahead of the bridge
                      family's dstnat at -300): iifname @ports jump validate

What a validated port may send (everything else is dropped, counted and recorded):
  - frames with its own MAC as Ethernet source, of type IPv4, IPv6 or ARP only
    (no VLAN tags, no other protocols);
  - IPv4 from its own addresses;
  - ARP whose sender is its own MAC and one of its own addresses (an ARP probe, a
    request from 0.0.0.0, claims nothing and passes);
  - IPv6 from its own addresses; from a link-local address for neighbour discovery
    (router/neighbour solicitations and advertisements) and to link-local
    destinations (fe80::/10, ff02::/16); from the unspecified address only for
    duplicate address detection (a neighbour solicitation to a solicited-node
    group, and the MLD report that joins it: MLDv2 to ff02::16, MLDv1 to the group); neighbour advertisements only for
    its own addresses or a link-local one; never a router advertisement or redirect.

Per-pod state is elements only: add_port() before the pod's interface comes up,
remove_port() at DEL.  The table's shape never changes per pod.  Names and addresses
reach nftables as JSON data; the one text command (nft.declare_typeof_set) carries
only the table's own name, which is made of [A-Za-z0-9_].
"""

import ipaddress
import re
from collections import namedtuple

from . import nft
from .errors import NftError

FAMILY = "bridge"
PRIORITY = -400
COUNTER = "spoofed"
SEEN_TIMEOUT = 60  # seconds a dropped (port, source) stays recorded
SEEN_SIZE = 1024
ND_SET = "nd6"
ND_TYPEOF = "iifname . @th,64,128"  # the target address of a neighbour advertisement
PORT_SETS = {"ports": "ifname", "mac": ["ifname", "ether_addr"], "addr4": ["ifname", "ipv4_addr"],
             "addr6": ["ifname", "ipv6_addr"]}
SEEN_SETS = {  # name -> (key type, what the journal says was wrong)
    "seen_mac": (["ifname", "ether_addr"], "MAC address not the pod's"),
    "seen_arp": (["ifname", "ipv4_addr"], "ARP for an address not the pod's"),
    "seen4": (["ifname", "ipv4_addr"], "IPv4 source not the pod's"),
    "seen6": (["ifname", "ipv6_addr"], "IPv6 source not the pod's"),
    "seen_na": (None, "neighbour advertisement for an address not the pod's"),  # typeof ND_TYPEOF
    "seen_type": (["ifname", "ether_type"], "protocol other than IPv4, IPv6 and ARP"),
}
CHAINS = ("prerouting", "validate", "arp", "ipv4", "ipv6", "na", "na_target", "drop_mac", "drop_arp_mac",
          "drop_arp", "drop4", "drop6", "drop_na", "drop_type")
_LINK_LOCAL = ipaddress.ip_network("fe80::/10")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def table_name(network: str) -> str:
    return "weft_source_" + re.sub(r"[^A-Za-z0-9_]", "_", network)


class Port(namedtuple("Port", "name mac addresses", defaults=((),))):
    """One validated pod interface: its host veth, its MAC, its addresses (ip_address)."""

    __slots__ = ()

    def elements(self) -> dict:
        """{set name: [JSON element]} of this port."""
        out = {"ports": [self.name], "mac": [{"concat": [self.name, self.mac.lower()]}],
               "addr4": [], "addr6": [], ND_SET: []}
        for address in self.addresses:
            if address.version == 4:
                out["addr4"].append({"concat": [self.name, str(address)]})
            else:
                out["addr6"].append({"concat": [self.name, str(address)]})
                out[ND_SET].append({"concat": [self.name, _as_integer(address)]})
        return {name: values for name, values in out.items() if values}

    def listed(self) -> dict:
        """{set name: {value as nft lists it}} of this port (see nft.sets_of)."""
        out = {}
        for name, values in self.elements().items():
            out[name] = {v if isinstance(v, str) else " . ".join(v["concat"]) for v in values}
        return out


def _as_integer(address) -> str:
    return f"0x{int(address):032x}"


Outcome = nft.Outcome  # action: "unchanged", "created", "rebuilt", "repaired"


# -- the table's shape ---------------------------------------------------------------
def _m(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key):
    return {"meta": {"key": key}}


def _pl(protocol, name):
    return {"payload": {"protocol": protocol, "field": name}}


def _port_key(second):
    return {"concat": [_meta("iifname"), second]}


# Each kind of refusal ends in its own two-rule chain: record (port, what was claimed)
# in a seen set, then count and drop.  Two rules, not one: when a seen set is full the
# recording fails, which ends its rule — the drop must not be part of that rule, or a
# pod that filled the set would fall through the chain and be accepted.
DROPS = {  # chain -> (seen set, the value recorded)
    "drop_mac": ("seen_mac", _pl("ether", "saddr")),
    "drop_arp_mac": ("seen_mac", _pl("arp", "saddr ether")),
    "drop_arp": ("seen_arp", _pl("arp", "saddr ip")),
    "drop4": ("seen4", _pl("ip", "saddr")),
    "drop6": ("seen6", _pl("ip6", "saddr")),
    "drop_na": ("seen_na", {"payload": {"base": "th", "offset": 64, "len": 128}}),
    "drop_type": ("seen_type", _pl("ether", "type")),
}


def _drop(chain: str) -> list:
    return [{"goto": {"target": chain}}]


def _drop_chains() -> dict:
    return {chain: [(f"weft: record in {seen}", [{"set": {"op": "add", "set": f"@{seen}", "elem": _port_key(value)}}]),
                    ("weft: count and drop", [{"counter": COUNTER}, {"drop": None}])]
            for chain, (seen, value) in DROPS.items()}


def _icmpv6(*types):
    return _m(_pl("icmpv6", "type"), {"set": list(types)} if len(types) > 1 else types[0])


def _prefix(network) -> dict:
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


ND_TARGET = {"payload": {"base": "th", "offset": 64, "len": 128}}
ND_TARGET_PREFIX10 = {"payload": {"base": "th", "offset": 64, "len": 10}}  # fe80::/10 is 0x3fa


def rules() -> dict:
    """{chain: [(comment, expr)]}: the whole rule set, the same for every network."""
    ether_src, arp_sha, arp_spa = _pl("ether", "saddr"), _pl("arp", "saddr ether"), _pl("arp", "saddr ip")
    ip_src, ip6_src, ip6_dst = _pl("ip", "saddr"), _pl("ip6", "saddr"), _pl("ip6", "daddr")
    return {
        "prerouting": [("weft: validate what the network's pods send",
                        [_m(_meta("iifname"), "@ports"), {"jump": {"target": "validate"}}])],
        "validate": [
            ("weft: the pod's own MAC only", [_m(_port_key(ether_src), "@mac", "!="), *_drop("drop_mac")]),
            ("weft: ARP", [_m(_pl("ether", "type"), "arp"), {"goto": {"target": "arp"}}]),
            ("weft: IPv4", [_m(_pl("ether", "type"), "ip"), {"goto": {"target": "ipv4"}}]),
            ("weft: IPv6", [_m(_pl("ether", "type"), "ip6"), {"goto": {"target": "ipv6"}}]),
            ("weft: nothing but IPv4, IPv6 and ARP", _drop("drop_type")),
        ],
        "arp": [
            ("weft: ARP sender MAC is the pod's", [_m(_port_key(arp_sha), "@mac", "!="), *_drop("drop_arp_mac")]),
            ("weft: ARP probes claim nothing", [_m(_pl("arp", "operation"), "request"), _m(arp_spa, "0.0.0.0"),
                                                {"accept": None}]),
            ("weft: ARP for the pod's own addresses", [_m(_port_key(arp_spa), "@addr4"), {"accept": None}]),
            ("weft: ARP for another address", _drop("drop_arp")),
        ],
        "ipv4": [
            ("weft: IPv4 from the pod's own addresses", [_m(_port_key(ip_src), "@addr4"), {"accept": None}]),
            ("weft: IPv4 from another address", _drop("drop4")),
        ],
        "ipv6": [
            ("weft: no router advertisements or redirects from pods",
             [_icmpv6("nd-router-advert", "nd-redirect"), *_drop("drop6")]),
            ("weft: neighbour advertisements", [_icmpv6("nd-neighbor-advert"), {"goto": {"target": "na"}}]),
            ("weft: IPv6 from the pod's own addresses", [_m(_port_key(ip6_src), "@addr6"), {"accept": None}]),
            ("weft: link-local for neighbour discovery", [_m(ip6_src, _prefix(_LINK_LOCAL)),
                                                          _icmpv6("nd-router-solicit", "nd-neighbor-solicit"),
                                                          {"accept": None}]),
            ("weft: link-local to link-local destinations",
             [_m(ip6_src, _prefix(_LINK_LOCAL)),
              _m(ip6_dst, {"set": [_prefix(_LINK_LOCAL), _prefix(ipaddress.ip_network("ff02::/16"))]}),
              {"accept": None}]),
            ("weft: duplicate address detection", [_m(ip6_src, "::"), _icmpv6("nd-neighbor-solicit"),
                                                   _m(ip6_dst, _prefix(ipaddress.ip_network("ff02::1:ff00:0/104"))),
                                                   {"accept": None}]),
            ("weft: joining the solicited-node group for DAD", [_m(ip6_src, "::"), _icmpv6("mld2-listener-report"),
                                                                _m(ip6_dst, "ff02::16"), {"accept": None}]),
            ("weft: joining the solicited-node group for DAD (MLDv1)",
             [_m(ip6_src, "::"), _icmpv6("mld-listener-report"),
              _m(ip6_dst, _prefix(ipaddress.ip_network("ff02::1:ff00:0/104"))), {"accept": None}]),
            ("weft: IPv6 from another address", _drop("drop6")),
        ],
        "na": [
            ("weft: advertisement from the pod's own address", [_m(_port_key(ip6_src), "@addr6"),
                                                                 {"goto": {"target": "na_target"}}]),
            ("weft: advertisement from link-local", [_m(ip6_src, _prefix(_LINK_LOCAL)),
                                                      {"goto": {"target": "na_target"}}]),
            ("weft: advertisement from another address", _drop("drop6")),
        ],
        "na_target": [
            ("weft: advertising the pod's own address", [_m(_port_key(ND_TARGET), f"@{ND_SET}"), {"accept": None}]),
            ("weft: advertising a link-local address", [_m(ND_TARGET_PREFIX10, 0x3FA), {"accept": None}]),
            ("weft: advertising another address", _drop("drop_na")),
        ],
        **_drop_chains(),
    }


def _shape_commands(table: str, ports=()) -> list:
    """Everything but the table and nd6 (see _declare), with the ports' elements."""
    t = {"family": FAMILY, "table": table}
    commands = []
    for name, kind in PORT_SETS.items():
        commands.append({"add": {"set": {**t, "name": name, "type": kind}}})
    for name, (kind, _) in SEEN_SETS.items():
        if kind is None:
            continue  # declared by _declare
        commands.append({"add": {"set": {**t, "name": name, "type": kind, "flags": ["timeout"],
                                         "timeout": SEEN_TIMEOUT, "size": SEEN_SIZE}}})
    commands.append({"add": {"counter": {**t, "name": COUNTER}}})
    for chain in CHAINS:
        spec = {**t, "name": chain}
        if chain == "prerouting":
            spec.update(type="filter", hook="prerouting", prio=PRIORITY, policy="accept")
        commands.append({"add": {"chain": spec}})
    for chain, chain_rules in rules().items():
        for comment, expr in chain_rules:
            commands.append({"add": {"rule": {**t, "chain": chain, "comment": comment, "expr": expr}}})
    commands += element_commands(table, "add", ports)
    return commands


def element_commands(table: str, verb: str, ports) -> list:
    merged = {}
    for port in ports:
        for name, values in port.elements().items():
            merged.setdefault(name, []).extend(values)
    return [{verb: {"element": {"family": FAMILY, "table": table, "name": name, "elem": values}}}
            for name, values in sorted(merged.items())]


def _declare(table: str) -> None:
    if not _NAME.match(table):
        raise ValueError(f"table name {table!r} is not made of [A-Za-z0-9_]")
    nft.declare_typeof_set(FAMILY, table, ND_SET, ND_TYPEOF)
    nft.declare_typeof_set(FAMILY, table, "seen_na", ND_TYPEOF, timeout=SEEN_TIMEOUT, size=SEEN_SIZE)


def create(network: str, ports=()) -> None:
    """Make the table from nothing (a table of that name is replaced)."""
    table = table_name(network)
    thing = {"table": {"family": FAMILY, "name": table}}
    nft.run([{"add": thing}, {"delete": thing}])
    _declare(table)
    nft.run(_shape_commands(table, ports))


# -- comparing with the kernel ----------------------------------------------------------
def _shape_problems(objects: list) -> list:
    problems = []
    chains = nft.chains_of(objects)
    base = chains.get("prerouting")
    if base is not None and (base.get("type"), base.get("hook"), base.get("prio")) != \
            ("filter", "prerouting", PRIORITY):
        problems.append("chain prerouting is not a filter prerouting chain at priority -400")
    for chain, chain_rules in rules().items():
        if chain not in chains:
            problems.append(f"chain {chain} missing")
            continue
        have = [r.get("comment") for r in nft.rules_of(objects, chain)]
        if have != [c for c, _ in chain_rules]:
            problems.append(f"chain {chain} holds {len(have)} rule(s), wanted {len(chain_rules)}")
    extra = sorted(set(chains) - set(CHAINS))
    if extra:
        problems.append(f"unexpected chain(s) {', '.join(extra)}")
    present = {item["set"]["name"] for item in objects if "set" in item}
    missing = sorted((set(PORT_SETS) | set(SEEN_SETS) | {ND_SET}) - present)
    if missing:
        problems.append(f"set(s) {', '.join(missing)} missing")
    if not any(item.get("counter", {}).get("name") == COUNTER for item in objects):
        problems.append(f"counter {COUNTER} missing")
    return problems


def _element_diff(objects: list, ports) -> tuple:
    """(missing {set: {value}}, extra {set: {value}}) of the port sets against `ports`."""
    present = {name: {value for value, _ in values} for name, values in nft.sets_of(objects).items()}
    wanted = {}
    for port in ports:
        for name, values in port.listed().items():
            wanted.setdefault(name, set()).update(values)
    missing, extra = {}, {}
    for name in (*PORT_SETS, ND_SET):
        have = {_normal(name, v) for v in present.get(name, set())}
        want = wanted.get(name, set())
        if want - have:
            missing[name] = want - have
        if have - want:
            extra[name] = have - want
    return missing, extra


def _normal(set_name: str, value: str) -> str:
    """A listed element as Port.listed() writes it (nft may print hex integers unpadded)."""
    if set_name == ND_SET and " . " in value:
        port, _, number = value.partition(" . ")
        try:
            return f"{port} . 0x{int(number, 0):032x}"
        except ValueError:
            return value
    return value


def _listed_to_json(set_name: str, value: str):
    if " . " not in value:
        return value
    return {"concat": value.split(" . ")}


def ports_in_kernel(objects: list) -> list:
    """The ports the listed table validates, rebuilt from its elements (standalone
    repair keeps them: nothing else knows them there)."""
    sets = {name: [v for v, _ in values] for name, values in nft.sets_of(objects).items()}
    macs = dict(v.split(" . ", 1) for v in sets.get("mac", []) if " . " in v)
    addresses = {}
    for name in ("addr4", "addr6"):
        for value in sets.get(name, []):
            port, _, address = value.partition(" . ")
            try:
                addresses.setdefault(port, []).append(ipaddress.ip_address(address))
            except ValueError:
                continue
    return [Port(name, macs[name], tuple(addresses.get(name, ()))) for name in sets.get("ports", [])
            if name in macs]


def ensure(network: str, ports=None, rebuild_with=None) -> Outcome:
    """Make the kernel's table hold the shape and, when `ports` is given (the agent's
    records), exactly those ports' elements; one listing when nothing differs; element
    drift is repaired in one transaction, a damaged shape by rebuilding the table.
    ports=None: the shape only, listed without the elements (a standalone ADD: the
    check must not grow with the pods); a missing or damaged table is then made with
    the ports rebuild_with() gives (standalone: every record of the node), or, without
    it, with the elements the table holds."""
    table = table_name(network)
    objects = nft.list_table(FAMILY, table, elements=ports is not None)
    if objects is None:
        create(network, ports if ports is not None else rebuild_with() if rebuild_with else ())
        return Outcome("created", ["table missing"])
    problems = _shape_problems(objects)
    if problems:
        if ports is None:
            ports = rebuild_with() if rebuild_with else ports_in_kernel(nft.list_table(FAMILY, table) or [])
        create(network, ports)
        return Outcome("rebuilt", problems)
    if ports is None:
        return Outcome("unchanged")
    missing, extra = _element_diff(objects, ports)
    if not missing and not extra:
        return Outcome("unchanged")
    commands, details = [], []
    for name, values in sorted(extra.items()):
        commands.append({"delete": {"element": {"family": FAMILY, "table": table, "name": name,
                                                 "elem": [_listed_to_json(name, v) for v in sorted(values)]}}})
        details.append(f"set {name}: {len(values)} element(s) of no pod of this node removed")
    for name, values in sorted(missing.items()):
        commands.append({"add": {"element": {"family": FAMILY, "table": table, "name": name,
                                              "elem": [_listed_to_json(name, v) for v in sorted(values)]}}})
        details.append(f"set {name}: {len(values)} missing element(s) restored")
    nft.run(commands)
    return Outcome("repaired", details)


# -- per pod ------------------------------------------------------------------------------
def add_port(network: str, port: Port) -> None:
    """Put the port under validation (one transaction).  A table gone meanwhile (drift)
    comes back with this port; the agent's reconcile restores the others' elements
    (standalone callers use ensure() with every record instead)."""
    table = table_name(network)
    try:
        nft.run(element_commands(table, "add", [port]))
    except NftError as exc:
        if not nft.is_missing(exc):
            raise
        ensure(network)
        nft.run(element_commands(table, "add", [port]))


def remove_port(network: str, port: Port) -> None:
    """Take the port's elements out; nothing to do when they, or the table, are gone."""
    table = table_name(network)
    # add-then-delete: the delete never fails for an element that is already gone
    commands = element_commands(table, "add", [port]) + element_commands(table, "delete", [port])
    try:
        nft.run(commands)
    except NftError as exc:
        if not nft.is_missing(exc):
            raise


def remove_addresses(network: str, port_name: str, addresses) -> None:
    """Take some addresses from a port, leaving it validated (its MAC and other addresses stay)."""
    elements = Port(port_name, "00:00:00:00:00:00", tuple(addresses)).elements()
    table = table_name(network)
    commands = []
    for verb in ("add", "delete"):  # add-then-delete: never fails for an element already gone
        commands += [{verb: {"element": {"family": FAMILY, "table": table, "name": name, "elem": values}}}
                     for name, values in sorted(elements.items()) if name not in ("ports", "mac")]
    try:
        nft.run(commands)
    except NftError as exc:
        if not nft.is_missing(exc):
            raise


def port_state(network: str, port_name: str):
    """CHECK: (table present?, {set name: {listed value}} of the elements of `port_name`)."""
    objects = nft.list_table(FAMILY, table_name(network))
    if objects is None:
        return False, {}
    held = {}
    for name, values in nft.sets_of(objects).items():
        if name not in PORT_SETS and name != ND_SET:
            continue
        mine = {_normal(name, v) for v, _ in values if v == port_name or v.startswith(port_name + " . ")}
        if mine:
            held[name] = mine
    return True, held


def port_problems(network: str, port: Port) -> list:
    """CHECK: what of the port's validation the kernel lacks or adds ([] when exact)."""
    table = table_name(network)
    present, held = port_state(network, port.name)
    if not present:
        return [f"table {FAMILY} {table} is missing"]
    problems = []
    wanted = port.listed()
    for name in sorted(set(wanted) | set(held)):
        if wanted.get(name, set()) != held.get(name, set()):
            problems.append(f"set {name} of table {FAMILY} {table} holds {sorted(held.get(name, ()))} for "
                            f"{port.name}, wanted {sorted(wanted.get(name, ()))}")
    return problems


# -- what was dropped -----------------------------------------------------------------------
def dropped_packets(network: str) -> int:
    """The counter's packets (0 when the table is missing)."""
    try:
        objects = nft.run([{"list": {"counter": {"family": FAMILY, "table": table_name(network),
                                                 "name": COUNTER}}}])
    except NftError as exc:
        if nft.is_missing(exc):
            return 0
        raise
    return sum(int(item["counter"].get("packets", 0)) for item in objects if "counter" in item)


def dropped_sources(network: str) -> list:
    """[(set name, port, value, seconds until it expires)] recorded in the seen sets."""
    table = table_name(network)
    out = []
    for name in SEEN_SETS:
        try:
            objects = nft.run([{"list": {"set": {"family": FAMILY, "table": table, "name": name}}}])
        except NftError as exc:
            if nft.is_missing(exc):
                continue
            raise
        for item in objects:
            for elem in (item.get("set") or {}).get("elem", []):
                inner = elem.get("elem", {}) if isinstance(elem, dict) and "elem" in elem else {"val": elem}
                value = inner.get("val")
                parts = value.get("concat") if isinstance(value, dict) else None
                if isinstance(parts, list) and len(parts) == 2:
                    value = str(parts[1])
                    if SEEN_SETS[name][0] is None:  # a raw 128-bit target: show it as the address it is
                        try:
                            value = str(ipaddress.IPv6Address(int(value, 0)))
                        except ValueError:
                            pass
                    out.append((name, str(parts[0]), value, int(inner.get("expires", SEEN_TIMEOUT))))
    return out
