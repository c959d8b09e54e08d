"""NetworkPolicy enforced by real agents in real node namespaces, as a truth table.

Modelled on the upstream Kubernetes netpol e2e suite (test/e2e/network/netpol):
namespaces x, y, z with pods a, b, c each, spread over two nodes (VXLAN between
them, so every scenario mixes same-node bridged flows and cross-node flows), every
pod serving TCP and UDP on ports 80 and 81.  Each scenario applies its objects with
`weftctl apply`, waits until every node's status reports a policy generation past
the change (the table is programmed before the status is written), probes all 72
pod pairs x 4 (protocol, port) in parallel, and compares with the verdicts of
cni_plugin.policy.verdict over the same objects; a mismatch prints both tables.
"""

import concurrent.futures
import copy
import itertools
import json
import os
import sys

import pytest
import yaml

from cni_plugin.policy.objects import parse_documents
from cni_plugin.policy.verdict import Cluster as Model, Endpoint
from lab.cluster import REPO, Cluster, wait_for

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
VXLAN_IPV6_ONLY = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd10:244::/48",
                   "Backend": {"Type": "vxlan", "VNI": 1}}
NAMESPACES = ("x", "y", "z")
NAMES = ("a", "b", "c")
PROBES = (("TCP", 80), ("TCP", 81), ("UDP", 80), ("UDP", 81))
PROBE_TIMEOUT = 1.0  # a denied probe costs this much; allowed ones answer in ms
CONVERGE = 20.0


def namespace(name, **labels):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"ns": name, **labels}}}


def pod(ns, name, **labels):
    """Pods a and c name their ports (http = TCP 80, alt = UDP 81); b names none."""
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name,
                                                         "labels": {"pod": name, **labels}}}
    if name in ("a", "c"):
        doc["spec"] = {"containers": [{"name": "app", "ports": [
            {"name": "http", "containerPort": 80}, {"name": "alt", "containerPort": 81, "protocol": "UDP"}]}]}
    return doc


def policy(name, ns="x", select=None, ingress=None, egress=None, types=None):
    spec = {"podSelector": select if select is not None else {}}
    if ingress is not None:
        spec["ingress"] = ingress
    if egress is not None:
        spec["egress"] = egress
    if types is not None:
        spec["policyTypes"] = types
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def labels(**match):
    return {"matchLabels": match}


def expr(key, operator, *values):
    item = {"key": key, "operator": operator}
    if values:
        item["values"] = list(values)
    return {"matchExpressions": [item]}


def key_of(doc):
    meta = doc["metadata"]
    return (doc["kind"], meta.get("namespace") if doc["kind"] != "Namespace" else None, meta["name"])


class World:
    def __init__(self, cluster, nodes, workdir):
        self.cluster, self.nodes, self.workdir = cluster, nodes, workdir
        self.objects = {}   # key -> raw doc, mirroring what is stored
        self.pods = {}      # (ns, name) -> lab Pod
        self.servers = []
        self.serial = 0

    # -- objects ---------------------------------------------------------------
    def _file(self, docs) -> str:
        self.serial += 1
        path = os.path.join(self.workdir, f"objects-{self.serial}.yaml")
        with open(path, "w") as handle:
            yaml.safe_dump_all(docs, handle)
        return path

    def generations(self):
        return [((n.status() or {}).get("policy") or {}).get("generation", -1) for n in self.nodes]

    def _converge(self, before, what):
        wait_for(lambda: all(g > b for g, b in zip(self.generations(), before)), CONVERGE,
                 what=f"every node's policy generation past {before} after {what} (now {self.generations()})")

    def apply(self, *docs):
        before = self.generations()
        self.cluster.weftctl("apply", "-f", self._file(list(docs)))
        for doc in docs:
            self.objects[key_of(doc)] = copy.deepcopy(doc)
        self._converge(before, "apply")

    def delete(self, *docs):
        before = self.generations()
        self.cluster.weftctl("delete", "-f", self._file(list(docs)))
        for doc in docs:
            self.objects.pop(key_of(doc), None)
        self._converge(before, "delete")

    def only(self, *policies):
        """Make these the only NetworkPolicies stored."""
        old = [d for k, d in self.objects.items() if k[0] == "NetworkPolicy"]
        if old:
            self.delete(*old)
        if policies:
            self.apply(*policies)

    # -- reachability ----------------------------------------------------------
    def model(self):
        parsed = parse_documents(list(self.objects.values()))
        kinds = {type(o).__name__: [] for o in parsed}
        for obj in parsed:
            kinds[type(obj).__name__].append(obj)
        pods = {(p.namespace, p.name): p for p in kinds.get("Pod", [])}
        return Model(kinds.get("Namespace", []), kinds.get("NetworkPolicy", [])), pods

    def expected(self) -> dict:
        model, pods = self.model()
        table = {}
        for src, dst in self.pairs():
            s = Endpoint.of(self.pods[src].ip, pods.get(src))
            d = Endpoint.of(self.pods[dst].ip, pods.get(dst))
            table[src, dst] = tuple(model.decide(s, d, proto, port).allowed for proto, port in PROBES)
        return table

    def pairs(self):
        return [(s, d) for s in self.pods for d in self.pods if s != d]

    def observed(self) -> dict:
        def ask(src):
            targets = [(dst, f"{self.pods[dst].ip}/{proto}/{port}") for dst in self.pods if dst != src
                       for proto, port in PROBES]
            out = self.pods[src].ns.run([sys.executable, "-m", "lab.netpol_probe", "ask", str(PROBE_TIMEOUT),
                                         *[t for _, t in targets]], cwd=REPO, timeout=60).stdout
            results = json.loads(out)
            return {dst: tuple(results[i * len(PROBES):(i + 1) * len(PROBES)])
                    for i, dst in enumerate(d for d in self.pods if d != src)}

        with concurrent.futures.ThreadPoolExecutor(len(self.pods)) as pool:
            rows = dict(zip(self.pods, pool.map(ask, self.pods)))
        return {(s, d): rows[s][d] for s, d in self.pairs()}

    def check(self, attempts=3):
        """Observed reachability equals the model's; re-probes a mismatch (a slow answer
        under load) before failing with both tables."""
        expected = self.expected()
        for _ in range(attempts):
            observed = self.observed()
            if observed == expected:
                return
        pytest.fail("reachability differs from the model (cells: TCP80 TCP81 UDP80 UDP81; "
                    "1 reachable, . blocked; rows from, columns to)\n"
                    + render("expected", expected, self.pods) + "\n" + render("observed", observed, self.pods)
                    + "\n" + "\n".join(f"  {s[0]}/{s[1]} -> {d[0]}/{d[1]}: expected {cell(expected[s, d])}, "
                                        f"observed {cell(observed[s, d])}" for s, d in self.pairs()
                                        if expected[s, d] != observed[s, d]))


def cell(values) -> str:
    return "".join("1" if v else "." for v in values)


def render(title, table, pods) -> str:
    names = [f"{ns}/{name}" for ns, name in pods]
    lines = [f"{title}:", "      " + " ".join(f"{n:>5}" for n in names)]
    for src in pods:
        row = [" -  " if src == dst else cell(table[src, dst]) for dst in pods]
        lines.append(f"{src[0]}/{src[1]:<3} " + " ".join(f"{c:>5}" for c in row))
    return "\n".join(lines)


def fast_conf(node):
    return node.netconf(agentSocket=os.path.join(node.run_dir, "weftd.sock"))


def start_pod(world, node, ns, name):
    pod_ = node.add_pod(conf=fast_conf(node), name=name, pod_namespace=ns)
    import subprocess
    server = subprocess.Popen(["ip", "netns", "exec", pod_.ns.name, sys.executable, "-m", "lab.netpol_probe",
                               "serve", pod_.ip, "80", "81"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    world.servers.append(server)
    assert server.stdout.readline().strip() == "listening", f"probe server in {ns}/{name} did not start"
    world.pods[ns, name] = pod_
    return pod_


def _world(tmp_path_factory, installed, config):
    workdir = tmp_path_factory.mktemp("netpol")
    cluster = Cluster(workdir / "cluster", installed)
    made = World(cluster, [], str(workdir))
    try:
        cluster.set_network("weft", config)
        made.nodes = [cluster.add_node() for _ in range(2)]
        for node in made.nodes:
            node.start_agent()
        for node in made.nodes:
            node.wait_ready()
            wait_for(lambda: len(node.status()["peers"]) == 1, 20, what=f"{node.name} peers")
            wait_for(lambda: (node.status().get("policy") or {}).get("state") == "enforcing", 20,
                     what=f"{node.name} enforcing policy (log {node.log_path})")
        made.apply(*[namespace(n) for n in NAMESPACES], *[pod(ns, n) for ns in NAMESPACES for n in NAMES])
        for index, (ns, name) in enumerate(itertools.product(NAMESPACES, NAMES)):
            start_pod(made, made.nodes[index % 2], ns, name)
        for node in made.nodes:
            wait_for(lambda: (node.status().get("policy") or {}).get("knownPods") == 9, CONVERGE,
                     what=f"{node.name} knowing all 9 pods from the allocation records")
        yield made
    finally:
        for server in made.servers:
            server.kill()
            server.wait()
        cluster.cleanup()


@pytest.fixture(scope="module")
def world(tmp_path_factory, installed):
    yield from _world(tmp_path_factory, installed, VXLAN)


@pytest.fixture(scope="module")
def world6(tmp_path_factory, installed):
    """The same nine pods on an IPv6-only network (EnableIPv4 false; IPv4 underlay)."""
    yield from _world(tmp_path_factory, installed, VXLAN_IPV6_ONLY)


X_ONLY = {"namespaceSelector": labels(ns="x")}

# name -> the NetworkPolicies of the scenario (each replaces the previous scenario's)
SCENARIOS = {
    "no policy: everything reachable": [],
    "default-deny ingress in x": [policy("deny", "x", ingress=[], types=["Ingress"])],
    "default-deny egress in x": [policy("deny", "x", egress=[], types=["Egress"])],
    "default-deny ingress and egress in x": [policy("deny", "x", types=["Ingress", "Egress"])],
    "allow all ingress in x": [policy("all", "x", ingress=[{}])],
    "allow all egress after default-deny egress": [policy("deny", "x", egress=[], types=["Egress"]),
                                                   policy("all", "x", egress=[{}], types=["Egress"])],
    "allow from the same namespace": [policy("same", "x", ingress=[{"from": [{"podSelector": {}}]}])],
    "allow x/a from x/b only": [policy("ab", "x", select=labels(pod="a"),
                                       ingress=[{"from": [{"podSelector": labels(pod="b")}]}])],
    "allow from namespaces labelled ns=y": [policy("fromy", "x", ingress=[{"from": [
        {"namespaceSelector": labels(ns="y")}]}])],
    "allow from namespaces ns NotIn [x]": [policy("notx", "x", ingress=[{"from": [
        {"namespaceSelector": expr("ns", "NotIn", "x")}]}])],
    "allow from pods b in every namespace (combined peer)": [policy("anyb", "x", ingress=[{"from": [
        {"namespaceSelector": {}, "podSelector": labels(pod="b")}]}])],
    "allow from namespace y or pods c of x (two peers)": [policy("ycx", "x", ingress=[{"from": [
        {"namespaceSelector": labels(ns="y")}, {"podSelector": labels(pod="c")}]}])],
    "combined selectors with matchExpressions": [policy("combo", "y", select=expr("pod", "In", "a", "b"),
                                                        ingress=[{"from": [
        {"namespaceSelector": expr("ns", "In", "x", "z"), "podSelector": expr("pod", "NotIn", "c")}]}])],
    "podSelector Exists and DoesNotExist": [
        policy("exists", "z", select=expr("pod", "Exists"), ingress=[{"from": [
            {"namespaceSelector": {}, "podSelector": expr("team", "DoesNotExist")}]}],),
        policy("nobody", "y", select=expr("team", "Exists"), ingress=[])],
    "allow TCP 80 only": [policy("tcp80", "x", ingress=[{"ports": [{"port": 80}]}])],
    "allow UDP 81 only": [policy("udp81", "x", ingress=[{"ports": [{"protocol": "UDP", "port": 81}]}])],
    "endPort range 80-81 from namespace y": [policy("range", "x", ingress=[{
        "from": [{"namespaceSelector": labels(ns="y")}], "ports": [{"port": 80, "endPort": 81}]}])],
    "every UDP port": [policy("udp", "z", ingress=[{"ports": [{"protocol": "UDP"}]}])],
    "several policies add up": [policy("fromy", "x", ingress=[{"from": [{"namespaceSelector": labels(ns="y")}]}]),
                                policy("fromz81", "x", ingress=[{"from": [{"namespaceSelector": labels(ns="z")}],
                                                                  "ports": [{"port": 81}]}])],
    "egress only to namespace y": [policy("toy", "x", egress=[{"to": [{"namespaceSelector": labels(ns="y")}]}],
                                          types=["Egress"])],
    "egress to pods c on TCP 81": [policy("toc", "y", egress=[{"to": [{"namespaceSelector": {},
                                                                       "podSelector": labels(pod="c")}],
                                                              "ports": [{"port": 81}]}], types=["Egress"])],
    "ingress isolation in x and egress isolation in y": [
        policy("inx", "x", ingress=[{"from": [{"namespaceSelector": labels(ns="y")}]}]),
        policy("outy", "y", egress=[{"to": [{"namespaceSelector": labels(ns="z")}]}], types=["Egress"])],
    "a policy for one pod leaves its neighbours open": [policy("onlyb", "z", select=labels(pod="b"), ingress=[])],
    "named port http from namespace y": [policy("http", "x", ingress=[{
        "from": [{"namespaceSelector": labels(ns="y")}], "ports": [{"port": "http"}]}])],
    "named UDP port alt plus TCP 81": [policy("alt", "z", ingress=[{
        "ports": [{"protocol": "UDP", "port": "alt"}, {"port": 81}]}])],
    "egress to named port http": [policy("tohttp", "y", egress=[{"ports": [{"port": "http"}]}], types=["Egress"])],
    "deny all ingress cluster-wide except from x": [
        policy("dx", "x", ingress=[{"from": [X_ONLY]}]), policy("dy", "y", ingress=[{"from": [X_ONLY]}]),
        policy("dz", "z", ingress=[{"from": [X_ONLY]}])],
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_truth_table(world, name):
    world.only(*SCENARIOS[name])
    world.check()


# the IPv6 twin runs these (isolation, selectors, ports, named ports) rather than every scenario
SCENARIOS_IPV6 = ["default-deny ingress and egress in x", "allow x/a from x/b only",
                  "allow from namespaces labelled ns=y", "allow from pods b in every namespace (combined peer)",
                  "allow UDP 81 only", "endPort range 80-81 from namespace y", "egress to pods c on TCP 81",
                  "named port http from namespace y"]


@pytest.mark.parametrize("name", SCENARIOS_IPV6)
def test_truth_table_ipv6(world6, name):
    world6.only(*SCENARIOS[name])
    world6.check()


def _pod_cidr(world, ns, name):
    ip = world.pods[ns, name].ip
    return f"{ip}/{128 if ':' in ip else 32}"


def _subnet(node) -> str:
    lease = node.status()["lease"]
    return lease["subnet"] or lease["ipv6Subnet"]


def _ipblock_with_except(world):
    """ipBlock: the first node's pod subnet, except one pod of it."""
    world.only(policy("block", "y", ingress=[{"from": [{"ipBlock": {"cidr": _subnet(world.nodes[0]),
                                                                     "except": [_pod_cidr(world, "x", "a")]}}]}]))
    world.check()


def _egress_to_ipblock(world):
    world.only(policy("toblock", "z", egress=[{"to": [{"ipBlock": {"cidr": _subnet(world.nodes[1])}}],
                                               "ports": [{"port": 80}]}], types=["Egress"]))
    world.check()


def test_ipblock_with_except(world):
    _ipblock_with_except(world)


def test_egress_to_ipblock(world):
    _egress_to_ipblock(world)


def test_ipblock_with_ipv6_cidr_and_except(world6):
    assert ":" in _subnet(world6.nodes[0])
    _ipblock_with_except(world6)


def test_egress_to_ipv6_ipblock(world6):
    _egress_to_ipblock(world6)


def test_isolation_never_drops_ipv6_neighbour_discovery(world6):
    """x is isolated both ways but talks to itself; with every pod's neighbour cache
    flushed, pods must find each other and their gateway again through ICMPv6 neighbour
    discovery (solicitations are multicast, bridged on one node: the forward hook sees
    them), so the allowed flows work and the rest stay denied."""
    world6.only(policy("self", "x", types=["Ingress", "Egress"], ingress=[{"from": [{"podSelector": {}}]}],
                       egress=[{"to": [{"podSelector": {}}]}]))
    for pod_ in world6.pods.values():
        pod_.ns.run(["ip", "-6", "neigh", "flush", "all"])
    world6.check()
    nd_rules = [r for node in world6.nodes
             for r in node.ns.run(["nft", "list", "table", "inet", "weft_policy_weft"]).stdout.splitlines()
             if "nd-neighbor-solicit" in r]
    assert nd_rules and all("accept" in r and "nd-redirect" in r for r in nd_rules), nd_rules


def test_policy_update_and_delete(world):
    first = policy("moving", "x", ingress=[{"from": [{"namespaceSelector": labels(ns="y")}]}])
    world.only(first)
    world.check()
    moved = policy("moving", "x", ingress=[{"from": [{"namespaceSelector": labels(ns="z")}]}])
    world.apply(moved)  # same name: an update
    world.check()
    ported = policy("moving", "x", ingress=[{"from": [{"namespaceSelector": labels(ns="z")}],
                                             "ports": [{"protocol": "UDP", "port": 81}]}])
    world.apply(ported)  # only a port changes: the rules, not the sets
    world.check()
    moved = ported
    world.delete(moved)
    world.check()


def test_pod_label_change(world):
    world.only(policy("fromb", "x", ingress=[{"from": [{"namespaceSelector": {},
                                                         "podSelector": labels(pod="b")}]}]))
    world.apply(pod("y", "c", pod="b"))  # y/c now carries pod=b: it joins the allowed peers
    try:
        world.check()
    finally:
        world.apply(pod("y", "c"))
    world.check()


def test_namespace_label_change(world):
    world.only(policy("fromy", "x", ingress=[{"from": [{"namespaceSelector": labels(ns="y")}]}]))
    world.apply(namespace("z", ns="y"))  # z is labelled ns=y now
    try:
        world.check()
    finally:
        world.apply(namespace("z"))
    world.check()


def test_new_pod_is_isolated_when_add_returns(world):
    """The fast path: a new pod selected by a default-deny policy refuses traffic the
    moment ADD returns, on both nodes; allowed peers reach it once every node knows it."""
    world.only(policy("deny", "x", select=labels(pod="d"), ingress=[{"from": [{"podSelector": labels(pod="a")}]}]))
    world.apply(pod("x", "d"))
    for node in world.nodes:
        wait_for(lambda: (node.status().get("policy") or {}).get("knownPods") == len(world.pods), CONVERGE,
                 what=f"{node.name} knowing every pod")
    new = start_pod(world, world.nodes[0], "x", "d")
    try:
        for src in (("y", "a"), ("x", "b"), ("z", "c")):  # on both nodes; not allowed
            out = world.pods[src].ns.run([sys.executable, "-m", "lab.netpol_probe", "ask", str(PROBE_TIMEOUT),
                                          f"{new.ip}/TCP/80", f"{new.ip}/UDP/81"], cwd=REPO).stdout
            assert json.loads(out) == [False, False], f"{src} reached the new pod x/d right after its ADD"
        for node in world.nodes:
            wait_for(lambda: (node.status().get("policy") or {}).get("knownPods") == len(world.pods), CONVERGE,
                     what=f"{node.name} knowing the new pod x/d")
        world.check()
    finally:
        server = world.servers.pop()
        server.kill()
        server.wait()
        del world.pods["x", "d"]
        assert world.nodes[0].delete_pod(new).code == 0


def test_bad_input_is_refused_and_nothing_is_stored(world):
    world.only(policy("deny", "x", ingress=[]))
    before = world.generations()
    bad = [policy("fine", "y", ingress=[]),
           policy("broken", "z", ingress=[{"ports": [{"port": 90, "endPort": 80}]}])]
    proc = world.cluster.weftctl("apply", "-f", world._file(bad), check=False)
    assert proc.returncode == 2, proc
    assert "document 2" in proc.stderr and "spec.ingress[0].ports[0].endPort" in proc.stderr, proc.stderr
    assert "nothing was stored" in proc.stderr
    listed = world.cluster.weftctl("policy", "list").stdout.split()
    assert "NetworkPolicy/y/fine" not in listed and "NetworkPolicy/x/deny" in listed, listed
    assert world.generations() == before
    world.check()


def _nft(node, *args):
    return node.ns.run(["nft", *args], check=False)


def test_agent_restart_keeps_rules_and_reconciles(world):
    """SIGTERM leaves the table (pods stay isolated while no agent runs); a change made
    meanwhile is programmed by the restarted agent; a deleted table comes back."""
    world.only(policy("deny", "x", ingress=[{"from": [{"namespaceSelector": labels(ns="y")}]}]))
    node = world.nodes[1]
    node.stop_agent()
    try:
        assert _nft(node, "list", "table", "inet", "weft_policy_weft").returncode == 0
        world.check()  # enforced with no agent on node2
        before = world.generations()
        changed = policy("deny", "x", ingress=[{"from": [{"namespaceSelector": labels(ns="z")}]}])
        world.cluster.weftctl("apply", "-f", world._file([changed]))
        world.objects[key_of(changed)] = changed
        wait_for(lambda: world.generations()[0] > before[0], CONVERGE, what="node1 programming the change")
    finally:
        node.start_agent()
    node.wait_ready()
    wait_for(lambda: world.generations()[1] >= world.generations()[0], CONVERGE,
             what=f"{node.name} catching up with the change after its restart")
    world.check()
    wait_for(lambda: world.cluster.weftctl("status", "--cluster", check=False).returncode == 0, CONVERGE,
             what="weftctl status --cluster reporting every node current")
    converged = world.cluster.weftctl("status", "--cluster").stdout
    assert "every node enforces them" in converged and "weft node2: current" in converged, converged
    repaired = node.status()["policy"]["driftRepaired"]
    assert _nft(node, "delete", "table", "inet", "weft_policy_weft").returncode == 0
    wait_for(lambda: node.status()["policy"]["driftRepaired"] > repaired, CONVERGE,
             what="the agent putting back its deleted policy table")
    world.check()
    series = 'weft_policy_drops_total{network="weft",policy="x/deny"}'
    wait_for(lambda: series in node.http("/metrics")[1], CONVERGE,
             what=f"{series} in {node.name}'s /metrics after denied probes")


def test_explain_names_the_policies(world):
    world.only(policy("fromy", "x", ingress=[{"from": [{"namespaceSelector": labels(ns="y")}],
                                                 "ports": [{"port": 80}]}]))
    allowed = world.cluster.weftctl("policy", "explain", "y/a", "x/b", "80/TCP", check=False)
    assert allowed.returncode == 0, allowed
    assert allowed.stdout.startswith(f"ALLOWED: y/a ({world.pods['y', 'a'].ip}) -> x/b"), allowed.stdout
    assert "ingress: allowed by x/fromy rule 0" in allowed.stdout, allowed.stdout
    denied = world.cluster.weftctl("policy", "explain", world.pods["z", "a"].ip, "x/b", "81/TCP", check=False)
    assert denied.returncode == 1, denied
    assert "DENIED" in denied.stdout and "isolated by x/fromy" in denied.stdout, denied.stdout
    world.check()


def test_denied_flows_are_journalled_naming_both_workloads(world):
    world.only(policy("deny", "x", select=labels(pod="b"), ingress=[]))
    started = world.cluster.weftctl("policy", "list").stdout  # etcd answers: the cluster is up
    assert "NetworkPolicy/x/deny" in started
    src, dst = world.pods["y", "a"], world.pods["x", "b"]
    out = src.ns.run([sys.executable, "-m", "lab.netpol_probe", "ask", str(PROBE_TIMEOUT),
                      f"{dst.ip}/TCP/81"], cwd=REPO).stdout
    assert json.loads(out) == [False]
    line = (f"ingress denied y/a ({src.ip}) -> x/b ({dst.ip}) TCP/81 (isolated by x/deny)")
    wait_for(lambda: line in world.cluster.weftctl("policy", "denials", "--state-dir", dst.node.state_dir).stdout,
             CONVERGE, what=f"the denial {line!r} in {dst.node.name}'s journal")
    future = world.cluster.weftctl("policy", "denials", "--state-dir", dst.node.state_dir,
                                   "--since", "2999-01-01T00:00:00Z").stdout
    assert future == ""


def test_host_gw_cross_node_traffic_is_enforced_alike(cluster, tmp_path):
    """The same table decides routed host-gw traffic: x/a on node1 admits only y/b (on
    node2), not z/c (on node2); replies of allowed connections come back."""
    nodes = cluster.start_nodes(2, {"Network": "10.245.0.0/16", "Backend": {"Type": "host-gw"}})
    here = World(cluster, nodes, str(tmp_path))
    here.apply(*[namespace(n) for n in NAMESPACES], pod("x", "a"), pod("y", "b"), pod("z", "c"))
    try:
        for node, (ns, name) in ((nodes[0], ("x", "a")), (nodes[1], ("y", "b")), (nodes[1], ("z", "c"))):
            start_pod(here, node, ns, name)
        for node in nodes:
            wait_for(lambda: (node.status().get("policy") or {}).get("knownPods") == 3, CONVERGE,
                     what=f"{node.name} knowing the 3 pods")
        here.apply(policy("fromb", "x", ingress=[{"from": [{"namespaceSelector": {},
                                                             "podSelector": labels(pod="b")}]}]))
        here.check()
        expected = here.expected()
        assert expected[("y", "b"), ("x", "a")] == (True,) * 4 and expected[("z", "c"), ("x", "a")] == (False,) * 4
    finally:
        for server in here.servers:
            server.kill()
            server.wait()
