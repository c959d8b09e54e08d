"""The policy table plan (policy/compile.py), the agent's policy state and weftctl's
apply validation: pure logic, no root."""

import ipaddress
import json

import pytest

from cni_plugin.cli import policy_cmds
from cni_plugin.datapath import policy_table
from cni_plugin.policy import compile as plan_mod
from cni_plugin.policy.objects import IpBlock
from cni_plugin.policy.state import PolicyState

LOCAL = [ipaddress.ip_network("10.244.1.0/24")]


def _policy(name, ns, spec):
    return (f"NetworkPolicy/{ns}/{name}", json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                                      "metadata": {"name": name, "namespace": ns}, "spec": spec}))


def _state(pods: int, policies: int) -> PolicyState:
    state = PolicyState()
    state.load_objects([_policy(f"p{i}", "x", {"podSelector": {"matchLabels": {"app": f"a{i % 5}"}},
                                               "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]})
                        for i in range(policies)])
    for i in range(pods):
        subnet = 1 + i % 2  # half local, half on another node
        state.record({"event": "allocate", "ip": f"10.244.{subnet}.{10 + i // 2}", "podNamespace": "x",
                      "podName": f"pod{i}", "ts": str(i)})
        state.put_object(f"Pod/x/pod{i}", json.dumps({"kind": "Pod", "metadata": {
            "namespace": "x", "name": f"pod{i}", "labels": {"app": f"a{i % 5}"}}}))
    return state


def _rules(table) -> int:
    return sum(len(r) for r in table.chains.values())


def test_rule_count_grows_with_policies_not_pods():
    small, large = _state(10, 20), _state(200, 20)
    a = plan_mod.plan("weft", small.cluster(), small.endpoints(), LOCAL)
    b = plan_mod.plan("weft", large.cluster(), large.endpoints(), LOCAL)
    assert _rules(a) == _rules(b)
    verbs = {(verb, next(iter(obj))) for command in policy_table._changes(b, a) for verb, obj in command.items()}
    assert verbs <= {("add", "element"), ("delete", "element")}  # pods only change elements
    more = _state(10, 40)
    assert _rules(plan_mod.plan("weft", more.cluster(), more.endpoints(), LOCAL)) > _rules(a)


def test_only_local_pods_are_selected_and_remote_ones_are_peers():
    state = _state(4, 1)  # pod0, pod2 local (10.244.1.x); pod1, pod3 remote
    table = plan_mod.plan("weft", state.cluster(), state.endpoints(), LOCAL)
    pid = plan_mod.policy_id("x/p0")
    assert table.sets[f"{pid}_sel4"][2] == frozenset({"10.244.1.10"})  # pod0 (app a0) only
    assert table.sets["iso_in4"][2] == frozenset({"10.244.1.10"})
    assert table.sets[f"{pid}_i0_pods4"][2] == frozenset(  # every pod of x, wherever it runs
        {"10.244.1.10", "10.244.1.11", "10.244.2.10", "10.244.2.11"})


def test_ipblock_except_leaves_holes():
    block = IpBlock(ipaddress.ip_network("10.0.0.0/24"), (ipaddress.ip_network("10.0.0.128/25"),
                                                          ipaddress.ip_network("10.0.0.7/32")))
    nets = plan_mod._block_networks(block)
    assert ipaddress.ip_address("10.0.0.6") in nets[0] or any(ipaddress.ip_address("10.0.0.6") in n for n in nets)
    assert not any(ipaddress.ip_address(a) in n for n in nets for a in ("10.0.0.7", "10.0.0.200"))
    assert sum(n.num_addresses for n in nets) == 127


def test_release_and_bad_objects():
    state = PolicyState()
    state.record({"event": "allocate", "ip": "10.244.1.5", "podNamespace": "x", "podName": "a"})
    assert state.endpoint("x/a").ip == ipaddress.ip_address("10.244.1.5")
    state.record({"event": "release", "ip": "10.244.1.5"})
    with pytest.raises(ValueError, match="pod x/a holds no address"):
        state.endpoint("x/a")
    state.put_object("NetworkPolicy/x/bad", json.dumps({"kind": "NetworkPolicy", "metadata": {"name": "bad"}}))
    assert "NetworkPolicy/x/bad" in state.rejected and not state.policies
    state.put_object("NetworkPolicy/x/other", _policy("p", "x", {"podSelector": {}})[1])
    assert "names itself NetworkPolicy/x/p" in state.rejected["NetworkPolicy/x/other"]


def _never(args):
    raise AssertionError("etcd must not be touched for bad input")


@pytest.mark.parametrize("text, words", [
    ("kind: NetworkPolicy\nmetadata: {name: a\n", "line"),
    ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\n"
     "spec: {podSelector: {}, ingress: [{ports: [{port: 0}]}]}\n", "spec.ingress[0].ports[0].port 0"),
    ("kind: Deployment\nmetadata: {name: a}\n", "kind 'Deployment'"),
    ("", "holds no objects"),
])
def test_apply_refuses_bad_files_without_touching_etcd(tmp_path, capsys, text, words):
    path = tmp_path / "objects.yaml"
    path.write_text(text)
    args = type("Args", (), {"command": "apply", "filename": str(path)})()
    assert policy_cmds.run(args, _never) == policy_cmds.EXIT_USAGE
    err = capsys.readouterr().err
    assert words in err and str(path) in err, err


def test_a_port_change_refills_only_that_policys_chain():
    state = _state(4, 2)
    before = plan_mod.plan("weft", state.cluster(), state.endpoints(), LOCAL)
    state.put_object(*_policy("p0", "x", {"podSelector": {"matchLabels": {"app": "a0"}},
                                          "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 81}]}]}))
    after = plan_mod.plan("weft", state.cluster(), state.endpoints(), LOCAL)
    flushed = [c["flush"]["chain"]["name"] for c in policy_table._changes(after, before) if "flush" in c]
    assert flushed == [f"{plan_mod.policy_id('x/p0')}_in"]


def test_membership_updates_match_a_full_plan():
    state = _state(20, 10)
    frags = {p.ref: plan_mod.policy_fragment(p, state.cluster(), state.endpoints(), LOCAL)
             for p in state.cluster().policies}
    ip = ipaddress.ip_address("10.244.1.200")
    state.record({"event": "allocate", "ip": str(ip), "podNamespace": "x", "podName": "pod3", "ts": "99"})
    wanted = plan_mod.memberships(state.cluster(), ip, state.pod("x", "pod3"), True)
    for frag in frags.values():
        for name, (kind, interval, elements) in list(frag.sets.items()):
            if name in wanted:
                frag.sets[name] = (kind, interval, elements | {str(ip)})
    incremental = plan_mod.assemble("weft", frags.values())
    full = plan_mod.plan("weft", state.cluster(), state.endpoints(), LOCAL)
    assert incremental.sets == full.sets and wanted


def test_iso_sets_follow_the_selecting_policies():
    state = _state(4, 3)
    table = plan_mod.plan("weft", state.cluster(), state.endpoints(), LOCAL)
    selected = set().union(*(e for n, (_, _, e) in table.sets.items() if n.endswith("_sel4")))
    assert table.sets["iso_in4"][2] == selected and table.sets["iso_out4"][2] == frozenset()


def test_a_late_release_of_the_previous_pod_keeps_the_new_holder():
    state = PolicyState()
    state.record({"event": "allocate", "ip": "10.244.1.5", "podNamespace": "x", "podName": "old",
                  "ts": "2026-12-02T01:00:00.000000Z"})
    state.record({"event": "allocate", "ip": "10.244.1.5", "podNamespace": "x", "podName": "new",
                  "ts": "2026-12-02T01:00:05.000000Z"})  # the fast path, before the release arrives
    assert not state.record({"event": "release", "ip": "10.244.1.5", "ts": "2026-12-02T01:00:02.000000Z"})
    assert state.endpoint("x/new").ip == ipaddress.ip_address("10.244.1.5")
    assert state.record({"event": "release", "ip": "10.244.1.5", "ts": "2026-12-02T01:00:09.000000Z"})


def test_isolates_any_only_when_a_local_pod_is_isolated():
    """The agent reads the denied-flow sets only while this can be true."""
    assert not plan_mod.isolates_any(plan_mod.plan("weft", _state(0, 0).cluster(), _state(0, 0).endpoints(), LOCAL))
    remote_only = _state(4, 1)
    assert not plan_mod.isolates_any(plan_mod.plan("weft", remote_only.cluster(), remote_only.endpoints(),
                                                   [ipaddress.ip_network("10.244.9.0/24")]))
    local = _state(4, 1)
    assert plan_mod.isolates_any(plan_mod.plan("weft", local.cluster(), local.endpoints(), LOCAL))


def _mangles(rules) -> list:
    return [e["mangle"] for _, expr in rules for e in expr if "mangle" in e]


def test_accepting_rules_mark_the_policy_number_named_ports_included():
    """flows/marks.py: the number in the direction's field of the ct mark, other bits kept;
    the drop rules record the same number in the denied-flow elements."""
    from cni_plugin.flows import marks

    state = _state(4, 2)
    state.put_object("NetworkPolicy/x/named", _policy("named", "x", {
        "podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]})[1])
    numbers = marks.PolicyNumbers()
    table = plan_mod.plan("weft", state.cluster(), state.endpoints(), LOCAL, numbers)
    for ref in ("x/p0", "x/p1", "x/named"):
        mangles = _mangles(table.chains[f"{plan_mod.policy_id(ref)}_in"])
        value = numbers.number(ref) << marks.INGRESS_SHIFT
        assert mangles and all(m["value"]["|"][1] == value and
                               m["value"]["|"][0]["&"][1] == 0xFFFFFFFF ^ marks.INGRESS_MASK for m in mangles)
    recorded = [e["set"]["elem"]["concat"][-1] for _, expr in table.chains["ingress"] for e in expr if "set" in e]
    assert sorted(recorded) == sorted(numbers.number(r) for r in ("x/p0", "x/p1", "x/named") for _ in (4, 6))
