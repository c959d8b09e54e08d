"""NetworkPolicy semantics without a kernel: the x/y/z × a/b/c reachability tables of
the upstream netpol e2e suite's scenarios, computed by weft's model, and the
validation of every field (errors name the field, nothing partial)."""

import pytest

from cni_plugin.policy.objects import ContainerPort, Namespace, Pod, PolicyError, parse_documents, parse_object
from cni_plugin.policy.verdict import Cluster, Endpoint

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")


def pods():
    out = {}
    for n, ns in enumerate(NAMESPACES):
        for p, name in enumerate(PODS):
            pod = Pod(ns, name, (("pod", name),), (ContainerPort("serve-80-tcp", 80, "TCP"),
                                                   ContainerPort("serve-81-udp", 81, "UDP")))
            out[f"{ns}/{name}"] = Endpoint.of(f"10.244.{n + 1}.{p + 10}", pod)
    return out


PODS_BY_REF = pods()


def namespace(name, **labels):
    return parse_object({"kind": "Namespace", "metadata": {"name": name, "labels": {"ns": name, **labels}}})


def policy(namespace="x", name="p", **spec):
    spec.setdefault("podSelector", {})
    return parse_object({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def table(cluster, protocol="TCP", port=80) -> dict:
    """{(from, to): allowed} over all 81 pairs."""
    return {(s, d): cluster.decide(PODS_BY_REF[s], PODS_BY_REF[d], protocol, port).allowed
            for s in PODS_BY_REF for d in PODS_BY_REF}


def expect(allow_all=True, **changes):
    """The 81-cell table: all allowed (or all denied) except the listed cells, given as
    keyword 'x_a__y_b'=bool for (x/a -> y/b)."""
    cells = {(s, d): allow_all for s in PODS_BY_REF for d in PODS_BY_REF}
    for key, value in changes.items():
        src, dst = key.split("__")
        cells[(src.replace("_", "/"), dst.replace("_", "/"))] = value
    return cells


def deny_into(target, cells, but=()):
    for s in PODS_BY_REF:
        cells[(s, target)] = s in but
    return cells


def show(observed: dict, wanted: dict) -> str:
    refs = list(PODS_BY_REF)
    rows = ["      " + " ".join(f"{r:>4}" for r in refs)]
    for s in refs:
        marks = []
        for d in refs:
            o, w = observed[(s, d)], wanted[(s, d)]
            marks.append(f"{'.' if o else 'X':>4}" if o == w else f"{'!' + ('.' if o else 'X'):>4}")
        rows.append(f"{s:>5} " + " ".join(marks))
    return "reachability (. allowed, X denied, ! differs from expected):\n" + "\n".join(rows)


def check(cluster, wanted, **probe):
    observed = table(cluster, **probe)
    assert observed == wanted, show(observed, wanted)


def cluster(*policies):
    return Cluster([namespace(n) for n in NAMESPACES], policies)


def test_no_policy_everything_talks():
    check(cluster(), expect())


def test_default_deny_ingress_in_one_namespace():
    cells = expect()
    for d in ("x/a", "x/b", "x/c"):
        deny_into(d, cells)
    check(cluster(policy(policyTypes=["Ingress"])), cells)


def test_allow_all_ingress_after_a_deny_adds_up():
    check(cluster(policy(name="deny"), policy(name="all", ingress=[{}])), expect())


def test_allow_from_the_same_namespace():
    cells = deny_into("x/a", expect(), but=("x/a", "x/b", "x/c"))
    check(cluster(policy(podSelector={"matchLabels": {"pod": "a"}},
                         ingress=[{"from": [{"podSelector": {}}]}])), cells)


def test_allow_from_labelled_namespaces():
    cells = deny_into("x/a", expect(), but=("y/a", "y/b", "y/c"))
    check(cluster(policy(podSelector={"matchLabels": {"pod": "a"}},
                         ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}])), cells)


def test_namespace_and_pod_selector_in_one_peer_is_and_in_two_peers_is_or():
    both = policy(podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}])
    check(cluster(both), deny_into("x/a", expect(), but=("y/b",)))
    either = policy(podSelector={"matchLabels": {"pod": "a"}}, ingress=[{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}])
    check(cluster(either), deny_into("x/a", expect(), but=("y/a", "y/b", "y/c", "x/b")))


def test_match_expressions_every_operator():
    def only(expr):
        return policy(podSelector={"matchLabels": {"pod": "a"}},
                      ingress=[{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [expr]}}]}])
    everyone = [f"{n}/{p}" for n in NAMESPACES for p in PODS]
    check(cluster(only({"key": "pod", "operator": "In", "values": ["b", "c"]})),
          deny_into("x/a", expect(), but=[r for r in everyone if not r.endswith("/a")]))
    check(cluster(only({"key": "pod", "operator": "NotIn", "values": ["b"]})),
          deny_into("x/a", expect(), but=[r for r in everyone if not r.endswith("/b")]))
    check(cluster(only({"key": "pod", "operator": "Exists"})), deny_into("x/a", expect(), but=everyone))
    check(cluster(only({"key": "pod", "operator": "DoesNotExist"})), deny_into("x/a", expect()))


def test_ports_protocols_and_end_port():
    ranged = policy(ingress=[{"ports": [{"port": 80, "endPort": 82}]}])
    check(cluster(ranged), expect(), port=81)
    cells = expect()
    for d in ("x/a", "x/b", "x/c"):
        deny_into(d, cells)
    check(cluster(ranged), cells, port=83)
    check(cluster(ranged), cells, protocol="UDP", port=81)
    sctp = policy(ingress=[{"ports": [{"protocol": "SCTP", "port": 80}]}])
    check(cluster(sctp), expect(), protocol="SCTP", port=80)
    check(cluster(sctp), cells, protocol="TCP", port=80)


def test_named_ports_resolve_on_the_destination_pod():
    named = policy(ingress=[{"ports": [{"protocol": "UDP", "port": "serve-81-udp"}]}])
    check(cluster(named), expect(), protocol="UDP", port=81)
    cells = expect()
    for d in ("x/a", "x/b", "x/c"):
        deny_into(d, cells)
    check(cluster(named), cells, protocol="UDP", port=80)


def test_ip_block_with_except():
    block = policy(podSelector={"matchLabels": {"pod": "a"}},
                   ingress=[{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": ["10.244.2.0/24"]}}]}])
    check(cluster(block), deny_into("x/a", expect(), but=[r for r in PODS_BY_REF if not r.startswith("y/")]))
    outside = Endpoint.of("192.0.2.7")
    assert not cluster(block).decide(outside, PODS_BY_REF["x/a"]).allowed
    assert cluster(block).decide(Endpoint.of("10.244.9.9"), PODS_BY_REF["x/a"]).allowed


def test_default_deny_egress_and_an_egress_allow():
    cells = expect()
    for d in PODS_BY_REF:
        cells[("x/a", d)] = False
    deny = policy(podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Egress"])
    check(cluster(deny), cells)
    to_y = policy(name="to-y", podSelector={"matchLabels": {"pod": "a"}}, policyTypes=["Egress"],
                  egress=[{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}])
    for d in ("y/a", "y/b", "y/c"):
        cells[("x/a", d)] = True
    check(cluster(deny, to_y), cells)
    # without policyTypes, an egress section also makes the policy isolate ingress
    implied = policy(name="to-y", podSelector={"matchLabels": {"pod": "a"}},
                     egress=[{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}])
    check(cluster(deny, implied), deny_into("x/a", cells))


def test_policy_types_default_from_the_egress_section():
    implied = policy(podSelector={}, egress=[])   # egress given: Egress too, deny all egress
    assert implied.types == frozenset({"Ingress", "Egress"})
    assert policy(podSelector={}).types == frozenset({"Ingress"})


def test_node_traffic_always_reaches_its_pods():
    deny = cluster(policy())
    node = Endpoint.of("10.244.1.1", node=True)
    verdict = deny.decide(node, PODS_BY_REF["x/a"])
    assert verdict.allowed and "kubelet probes" in verdict.explain()[0]


def test_namespace_label_changes_move_pods_in_and_out():
    rule = policy(podSelector={"matchLabels": {"pod": "a"}},
                  ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}])
    before = Cluster([namespace(n) for n in NAMESPACES], [rule])
    after = Cluster([namespace("x"), namespace("y", team="blue"), namespace("z")], [rule])
    assert not before.decide(PODS_BY_REF["y/b"], PODS_BY_REF["x/a"]).allowed
    assert after.decide(PODS_BY_REF["y/b"], PODS_BY_REF["x/a"]).allowed


def test_explain_names_the_policies_that_decide():
    deny = policy(name="deny-all")
    allow = policy(name="from-y", ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                           "ports": [{"port": 80}]}])
    c = cluster(deny, allow)
    yes = c.decide(PODS_BY_REF["y/a"], PODS_BY_REF["x/b"])
    assert yes.allowed and "ingress: allowed by x/from-y rule 0 (namespaces ns=y, TCP 80)" in yes.explain()
    no = c.decide(PODS_BY_REF["z/a"], PODS_BY_REF["x/b"])
    assert not no.allowed and "ingress: denied: isolated by x/deny-all, x/from-y" in no.explain()[1]


@pytest.mark.parametrize("spec,message", [
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 79}]}]},
     "spec.ingress[0].ports[0].endPort 79 is below port 80"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
     "spec.ingress[0].ports[0].endPort needs a numeric spec.ingress[0].ports[0].port"),
    ({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]},
     "spec.ingress[0].ports[0].protocol 'ICMP' is not one of TCP, UDP, SCTP"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]},
     "spec.ingress[0].ports[0].port 70000 is out of range"),
    ({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
     "spec.egress[0].to[0].ipBlock.except[0] 11.0.0.0/16 must lie strictly inside cidr 10.0.0.0/8"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "spec.ingress[0].from[0].ipBlock cannot be combined with a selector"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Has"}]}},
     "spec.podSelector.matchExpressions[0].operator 'Has' is not one of In, NotIn, Exists, DoesNotExist"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "spec.podSelector.matchExpressions[0].values must not be empty for operator In"),
    ({"podSelector": {}, "policyTypes": ["Sideways"]}, "spec.policyTypes ['Sideways'] must list Ingress"),
    ({}, "spec.podSelector is required"),
])
def test_invalid_policies_name_the_field(spec, message):
    with pytest.raises(PolicyError, match="NetworkPolicy x/p: " + message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_object({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                      "metadata": {"name": "p", "namespace": "x"}, "spec": spec})


def test_a_bad_document_refuses_the_whole_file():
    good = {"kind": "Namespace", "metadata": {"name": "x"}}
    bad = {"kind": "Pod", "metadata": {"name": "Bad_Name", "namespace": "x"}}
    with pytest.raises(PolicyError, match=r"document 2: Pod: metadata.name 'Bad_Name' is not a valid name"):
        parse_documents([good, bad])
    with pytest.raises(PolicyError, match="kind 'Service' is not one weft reads"):
        parse_documents([{"kind": "Service"}])
    assert parse_documents([good, None]) == [Namespace("x", (("kubernetes.io/metadata.name", "x"),))]
