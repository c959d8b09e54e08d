"""Pure planning of the node-wide masquerade table (datapath/masq.py), no root needed."""

import ipaddress
import json

from cni_plugin.datapath import masq

N = ipaddress.ip_network


def test_create_commands_are_json_data_describing_the_node():
    sets = masq._wanted_sets([N("10.244.3.0/24")], [N("10.244.0.0/16")])
    assert sets["src4"] == [N("10.244.3.0/24")]
    assert sets["nomasq4"] == [N("10.244.0.0/16"), N("224.0.0.0/4")]  # multicast always stays
    assert sets["src6"] == [] and sets["nomasq6"] == [N("ff00::/8")]
    commands = masq._create_commands("weft_x", sets)
    assert commands[0] == {"add": {"table": {"family": "inet", "name": "weft_x"}}}
    src4 = next(c["add"]["set"] for c in commands if "set" in c["add"] and c["add"]["set"]["name"] == "src4")
    assert src4["elem"] == [{"prefix": {"addr": "10.244.3.0", "len": 24}}] and src4["flags"] == ["interval"]
    rules = [c["add"]["rule"] for c in commands if "rule" in c["add"]]
    assert [r["expr"][-1] for r in rules] == [{"masquerade": {"flags": "fully-random"}}] * 2
    json.dumps(commands)  # what nft.run sends: plain JSON


def test_a_hostile_network_name_stays_a_string_and_a_safe_table_name():
    name = 'net"};flush ruleset;#'
    table = masq.table_name(name)
    assert table == "weft_net___flush_ruleset__"
    assert masq.Masquerade(name).table == table


def _listing(table, src, nomasq, rules=2):
    objects = [{"table": {"family": "inet", "name": table}}]
    for name, elems in (("src4", src), ("nomasq4", nomasq), ("src6", []), ("nomasq6", ["ff00::/8"])):
        objects.append({"set": {"name": name, "elem": [
            {"prefix": {"addr": e.split("/")[0], "len": int(e.split("/")[1])}} for e in elems]}})
    objects.append({"chain": {"name": "postrouting", "type": "nat", "hook": "postrouting", "prio": 100}})
    for version in (4, 6)[:rules]:
        objects.append({"rule": {"chain": "postrouting", "comment": masq._rule_comment(version),
                                 "expr": masq._rule_expr(version)}})
    return objects


def test_compare_finds_nothing_when_right_and_names_each_difference(monkeypatch):
    spec = masq.Masquerade("weft", (N("10.244.3.0/24"),), (N("10.244.0.0/16"),))
    listing = {"objects": _listing("weft_weft", ["10.244.3.0/24"], ["10.244.0.0/16", "224.0.0.0/4"])}
    monkeypatch.setattr(masq.nft, "list_table", lambda family, name: listing["objects"])
    assert masq.compare(spec)[2] == []
    listing["objects"] = _listing("weft_weft", ["10.244.9.0/24"], ["10.244.0.0/16", "224.0.0.0/4"], rules=1)
    differences = masq.compare(spec)[2]
    assert any("1 rule(s)" in d for d in differences) and any("set src4 holds 10.244.9.0/24" in d
                                                              for d in differences), differences
    # standalone (additive): a subnet already there is kept, the new one is added
    assert masq.compare(spec, exact=False)[1]["src4"] == [N("10.244.3.0/24"), N("10.244.9.0/24")]
    listing["objects"] = [{"table": {}}, {"set": {"name": "pods4", "elem": ["10.244.3.7"]}}]
    assert masq.compare(spec)[2] == ["per-pod table of an older weft"]
