"""Flow records from real agents (issue 26, docs/flows.md): two nodes, VXLAN between them,
pods in namespaces x and y, a policy on x/a that allows one flow and denies others.

Each connection is made with a known payload (lab/flow_traffic.py) and looked up in
the journals by its 5-tuple: workloads, ports, verdict, the policy the kernel marked,
and byte counters (payload plus headers) within a few percent.  One module cluster
(dual-stack) serves every test here but the IPv6-only ones, which share a second
(world6).  A Service is a DNAT table in each node's namespace, as kube-proxy programs it.
"""

import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time

import pytest
import yaml

from lab.cluster import REPO, Cluster, wait_for
from lab.cni import invoke

FLOW_INTERVAL = 2.0
TIME_WAIT = 2     # seconds: nf_conntrack_tcp_timeout_time_wait in the node namespaces (a TCP record comes at its DESTROY)
RECORD_WAIT = 90  # seconds a TCP record may take: TIME_WAIT and the kernel's garbage collection (a minute at most)
CONFIG = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd10:244::/48",
          "Backend": {"Type": "vxlan", "VNI": 1}, "FlowLog": True}
CONFIG6 = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd10:224::/48",
           "Backend": {"Type": "vxlan", "VNI": 1}, "FlowLog": True}
POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "from-y", "namespace": "x"},
          "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                "ports": [{"port": 80}, {"protocol": "UDP", "port": 81}]}]}}
OBJECTS = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"ns": n}}}
           for n in ("x", "y")] + \
          [{"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name, "labels": {"app": name}}}
           for ns, name in (("x", "a"), ("x", "b"), ("x", "e"), ("y", "c"), ("y", "d"))] + [POLICY]
TCP_HEADERS = 52   # IPv4 20 + TCP 20 + timestamps 12, per packet
TCP6_HEADERS = 72  # IPv6 40 + TCP 20 + timestamps 12
UDP_HEADERS = 28
UDP6_HEADERS = 48
DENIED_WAIT = 1.0  # seconds an attempt waits for the answer a policy drop never gives


class World:
    def __init__(self, cluster, workdir):
        self.cluster, self.workdir = cluster, workdir
        self.nodes, self.pods, self.processes = [], {}, []

    def flow_dir(self, node):
        return os.path.join(node.dir, "flows")

    def serve(self, ns, address, port):
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "lab.flow_traffic", "sink",
                                 address, str(port)], stdout=subprocess.PIPE, text=True, cwd=REPO)
        self.processes.append(proc)
        assert proc.stdout.readline().strip() == "listening"

    def send(self, src, protocol, address, port, size, count=1, hold=0.0):
        return self.send_from(self.pods[src], protocol, address, port, size, count, hold)

    def send_from(self, pod, protocol, address, port, size, count=1, hold=0.0, wait=5.0):
        out = pod.ns.run([sys.executable, "-m", "lab.flow_traffic", "send", protocol, address,
                          str(port), str(size), str(count), str(hold), str(wait)], cwd=REPO, timeout=60)
        return json.loads(out.stdout)

    def attempt(self, src, protocol, address, port):
        """One attempt a policy drops: no answer within a second (TCP retransmits its SYN
        once), so each denied test waits 1 s, not 5."""
        return self.send_from(self.pods[src], protocol, address, port, 10, 1, 0.0, DENIED_WAIT)

    def weftctl_flows(self, *args, check=True):
        dirs = [a for n in self.nodes for a in ("--dir", self.flow_dir(n))]
        return self.cluster.weftctl("flows", *dirs, *args, check=check)

    def expire_conntrack(self):
        """A closed TCP connection's entry ends TIME_WAIT seconds after the close, then waits
        for the kernel's GC (up to a minute): a dump in each node kills it at once instead."""
        for n in self.nodes:
            n.ns.expire_conntrack()

    def records(self, node=None, final=True):
        out = []
        for n in [node] if node else self.nodes:
            for name in sorted(os.listdir(self.flow_dir(n))) if os.path.isdir(self.flow_dir(n)) else ():
                with open(os.path.join(self.flow_dir(n), name)) as handle:
                    out += [json.loads(line) for line in handle if line.strip()]
        return [r for r in out if final is None or r.get("final", True) == final]

    def find(self, src, sport, dst, dport, proto, node=None, final=True, timeout=RECORD_WAIT, count=1):
        """The records of one connection, once there are `count` (one per node that saw it)."""
        expired_at = [time.monotonic()]

        def look():
            found = [r for r in self.records(node, final) if r["src"] == src and r["dst"] == dst
                     and r["dport"] == dport and r["proto"] == proto and (sport is None or r["sport"] == sport)]
            if len(found) >= count:
                return found
            if time.monotonic() - expired_at[0] >= 1.0:
                self.expire_conntrack()
                expired_at[0] = time.monotonic()
            return None
        return wait_for(look, timeout, interval=0.2, what=f"a {proto} flow record {src}:{sport} -> {dst}:{dport}")


PLACEMENT = {("x", "a"): 0, ("x", "e"): 0, ("y", "c"): 0, ("x", "b"): 1, ("y", "d"): 1}


def _start(made, config, workdir, before_agents=lambda: None):
    """Two agents with FlowLog on, the objects applied, the pods of PLACEMENT added and
    sinks on x/a's addresses (ports 80 and 81, TCP and UDP)."""
    cluster = made.cluster
    cluster.set_network("weft", config)
    made.nodes = [cluster.add_node() for _ in range(2)]
    for node in made.nodes:  # the node namespaces' own knob, never the root namespace's
        node.ns.set_tcp_time_wait(TIME_WAIT)
    before_agents()
    for node in made.nodes:
        node.start_agent(extra=["--flow-log-dir", made.flow_dir(node), "--flow-log-interval", str(FLOW_INTERVAL)])
    for node in made.nodes:
        node.wait_ready()
        wait_for(lambda: len(node.status()["peers"]) == 1, 20, what=f"{node.name} peers")
        wait_for(lambda: (node.status().get("policy") or {}).get("state") == "enforcing", 20,
                 what=f"{node.name} enforcing policy")
    path = os.path.join(str(workdir), "objects.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump_all(OBJECTS, handle)
    cluster.weftctl("apply", "-f", path)
    conf = {n.name: n.netconf(agentSocket=os.path.join(n.run_dir, "weftd.sock")) for n in made.nodes}
    for (ns, name), index in PLACEMENT.items():
        node = made.nodes[index]
        made.pods[ns, name] = node.add_pod(conf=conf[node.name], name=name, pod_namespace=ns)
    addresses = sum(len(pod.ips) for pod in made.pods.values())
    for node in made.nodes:
        wait_for(lambda: (node.status().get("policy") or {}).get("knownPods") == addresses, 20,
                 what=f"{node.name} knowing the 5 pods ({addresses} addresses)")
        wait_for(lambda: (node.status().get("flows") or {}).get("journal"), 10, what=f"{node.name} flow log on")
    for address in made.pods["x", "a"].ips:
        for port in (80, 81):
            made.serve(made.pods["x", "a"].ns.name, address, port)


def _stop(made):
    for proc in made.processes:
        proc.kill()
        proc.wait()
    for node in made.nodes:
        node.stop_agent()


@pytest.fixture(scope="module")
def world(tmp_path_factory, installed):
    workdir = tmp_path_factory.mktemp("flows")
    cluster = Cluster(workdir / "cluster", installed)
    made = World(cluster, str(workdir))
    mounted = None

    def small_journal():  # node1's journal on a small filesystem of its own, which a test fills (ENOSPC)
        nonlocal mounted
        mounted = made.flow_dir(made.nodes[0])
        os.makedirs(mounted)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "weft-flows-test", mounted], check=True)

    try:
        _start(made, CONFIG, workdir, small_journal)
        made.serve(cluster.underlay.name, "192.168.100.254", 9000)
        yield made
    finally:
        _stop(made)
        if mounted:
            subprocess.run(["umount", mounted], check=False)
        cluster.cleanup()


@pytest.fixture(scope="module")
def world6(tmp_path_factory, installed):
    """The same pods and policy on an IPv6-only network (docs/configuration.md)."""
    workdir = tmp_path_factory.mktemp("flows6")
    made = World(Cluster(workdir / "cluster", installed), str(workdir))
    try:
        _start(made, CONFIG6, workdir)
        yield made
    finally:
        _stop(made)
        made.cluster.cleanup()


def _epoch(text) -> float:
    from cni_plugin.timestamps import parse_ts

    return parse_ts(text).timestamp()


def _close(value, expected, tolerance=0.03):
    return abs(value - expected) <= tolerance * expected


@pytest.mark.parametrize("src,node_count", [(("y", "c"), 1), (("y", "d"), 2)], ids=["same-node", "cross-node"])
def test_allowed_tcp_is_recorded_with_workloads_policy_and_bytes(world, src, node_count):
    a = world.pods["x", "a"]
    payload = 200_000
    sent = world.send(src, "tcp", a.ip, 80, payload)
    assert sent["answered"] == 1
    source = world.pods[src]
    records = world.find(source.ip, sent["port"], a.ip, 80, "tcp", count=node_count)
    assert sorted(r["node"] for r in records) == sorted({source.node.name, a.node.name})
    for record in records:
        assert record["verdict"] == "allowed"
        assert record["srcPod"] == f"{src[0]}/{src[1]}" and record["dstPod"] == "x/a"
        assert record["sport"] == sent["port"] and record["network"] == "weft"
        assert record["start"].endswith("Z") and record["end"] >= record["start"]
        # end: the close, estimated as the kernel's stop time (expired) less the node's TIME_WAIT
        start, end, expired = (_epoch(record[k]) for k in ("start", "end", "expired"))
        assert abs(expired - TIME_WAIT - end) < 1e-3 or end == start, record
        packets = record["packets"]["sent"]
        assert _close(record["bytes"]["sent"], payload + packets * TCP_HEADERS), record
        assert record["packets"]["received"] >= 2 and record["bytes"]["received"] > 0
    on_a = next(r for r in records if r["node"] == a.node.name)
    assert on_a["policy"] == "x/from-y" and on_a["ingressPolicy"] == "x/from-y"


def test_ipv6_flows_allowed_and_denied(world):
    a, d, e = world.pods["x", "a"], world.pods["y", "d"], world.pods["x", "e"]
    assert ":" in a.ips[1]
    sent = world.send(("y", "d"), "tcp", a.ips[1], 80, 100_000)
    assert sent["answered"] == 1
    records = world.find(d.ips[1], sent["port"], a.ips[1], 80, "tcp", count=2)
    for record in records:
        assert record["srcPod"] == "y/d" and record["dstPod"] == "x/a" and record["verdict"] == "allowed"
        assert _close(record["bytes"]["sent"], 100_000 + record["packets"]["sent"] * TCP6_HEADERS), record
    assert next(r for r in records if r["node"] == a.node.name)["policy"] == "x/from-y"
    assert world.attempt(("x", "e"), "tcp", a.ips[1], 80)["answered"] == 0
    denied = world.find(e.ips[1], None, a.ips[1], 80, "tcp", node=a.node, timeout=10)[-1]
    assert denied["verdict"] == "denied" and denied["policy"] == "x/from-y" and denied["srcPod"] == "x/e"


def test_allowed_udp_counts_every_datagram(world):
    a, c = world.pods["x", "a"], world.pods["y", "c"]
    sent = world.send(("y", "c"), "udp", a.ip, 81, 1000, 20)
    assert sent["answered"] == 20
    # a UDP entry ends at its timeout; the interim record comes every FLOW_INTERVAL
    record = world.find(c.ip, sent["port"], a.ip, 81, "udp", final=None)[-1]
    assert record["verdict"] == "allowed" and record["policy"] == "x/from-y"
    assert record["srcPod"] == "y/c" and record["dstPod"] == "x/a"
    assert record["packets"] == {"sent": 20, "received": 20}
    assert record["bytes"]["sent"] == 20 * (1000 + UDP_HEADERS)


@pytest.mark.parametrize("src", [("x", "e"), ("x", "b")], ids=["same-node", "cross-node"])
def test_denied_attempts_name_the_isolating_policy(world, src):
    a = world.pods["x", "a"]
    for protocol, port in (("tcp", 80), ("udp", 81)):
        assert world.attempt(src, protocol, a.ip, port)["answered"] == 0
        record = world.find(world.pods[src].ip, None, a.ip, port, protocol, node=a.node,
                            timeout=10)[-1]
        assert record["verdict"] == "denied" and record["policy"] == "x/from-y"
        assert record["policies"] == ["x/from-y"] and record["direction"] == "ingress"
        assert record["srcPod"] == f"{src[0]}/{src[1]}" and record["dstPod"] == "x/a"


def test_pod_to_outside_keeps_the_address(world):
    c = world.pods["y", "c"]
    sent = world.send(("y", "c"), "tcp", "192.168.100.254", 9000, 5000)
    assert sent["answered"] == 1
    record = world.find(c.ip, sent["port"], "192.168.100.254", 9000, "tcp")[-1]
    assert record["srcPod"] == "y/c" and record["dstPod"] is None
    assert record["verdict"] == "allowed" and record["policy"] is None


def test_long_lived_connection_gets_interim_records(world):
    a, d = world.pods["x", "a"], world.pods["y", "d"]
    sent = world.send(("y", "d"), "tcp", a.ip, 80, 1000, 1, 2.5 * FLOW_INTERVAL)
    closed = time.time()
    final = world.find(d.ip, sent["port"], a.ip, 80, "tcp", node=a.node)  # at its DESTROY, after TIME_WAIT
    records = [r for r in world.records(a.node, final=None) if r["src"] == d.ip and r["sport"] == sent["port"]]
    interim = [r for r in records if not r["final"]]
    assert interim, records
    assert {r["id"] for r in interim} == {final[0]["id"]} and len(records) == len(interim) + 1
    assert interim[-1]["bytes"]["sent"] <= final[0]["bytes"]["sent"]
    # the interim dumps while its entry lingered in TIME_WAIT (>= TIME_WAIT s) did not report it again
    assert all(_epoch(r["end"]) <= closed for r in interim), (closed, interim)


def test_weftctl_flows_filters_and_merges_nodes(world):
    a, d = world.pods["x", "a"], world.pods["y", "d"]
    sent = world.send(("y", "d"), "tcp", a.ip, 80, 3000)
    world.find(d.ip, sent["port"], a.ip, 80, "tcp", node=d.node)
    world.find(d.ip, sent["port"], a.ip, 80, "tcp", node=a.node)
    merged = [json.loads(line) for line in world.weftctl_flows("--json", "--pod", "y/d", "--port",
                                                              str(sent["port"])).stdout.splitlines()]
    assert len(merged) == 1 and sorted(merged[0]["nodes"]) == ["node1", "node2"]
    per_node = world.weftctl_flows("--json", "--per-node", "--pod", "y/d", "--port", str(sent["port"])).stdout
    assert sorted(json.loads(line)["node"] for line in per_node.splitlines()) == ["node1", "node2"]
    denied = world.weftctl_flows("--json", "--verdict", "denied", "--policy", "x/from-y").stdout.splitlines()
    assert denied and all(json.loads(line)["verdict"] == "denied" for line in denied)
    table = world.weftctl_flows("--namespace", "y", "--node", "node2", "--peer", f"{a.ip}/32").stdout
    assert f"y/d ({d.ip}:{sent['port']})" in table and "x/a" in table
    assert world.weftctl_flows("--since", "yesterday", check=False).returncode == 2


def test_a_reused_address_names_each_holder_in_its_own_flows(world):
    node = world.nodes[0]
    conf = node.netconf(agentSocket=os.path.join(node.run_dir, "weftd.sock"))
    old = node.add_pod(conf=conf, name="old", pod_namespace="y")
    world.pods["y", "old"] = old
    before = world.send(("y", "old"), "tcp", "192.168.100.254", 9000, 100)
    world.find(old.ip, before["port"], "192.168.100.254", 9000, "tcp")
    assert node.delete_pod(old).code == 0
    node.pods.remove(old)
    reuse = dict(conf, runtimeConfig={"ips": [old.ip]})
    new = node.add_pod(conf=reuse, name="new", pod_namespace="y")
    world.pods["y", "new"] = new
    assert new.ip == old.ip
    after = world.send(("y", "new"), "tcp", "192.168.100.254", 9000, 100)
    (first,) = world.find(old.ip, before["port"], "192.168.100.254", 9000, "tcp")
    (second,) = world.find(new.ip, after["port"], "192.168.100.254", 9000, "tcp")
    assert first["srcPod"] == "y/old" and second["srcPod"] == "y/new"
    old.ns.delete()


def _metric(node, name, **labels) -> float:
    _, body = node.http("/metrics")
    for line in body.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_full_journal_drops_and_counts_while_traffic_and_agent_go_on(world):
    a, node = world.pods["x", "a"], world.nodes[0]
    filler = os.path.join(world.flow_dir(node), "filler")
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k", "count=100"], capture_output=True)
    try:
        before = _metric(node, "weft_flows_dropped_total", network="weft", reason="disk-full")
        for _ in range(3):
            assert world.send(("y", "c"), "tcp", a.ip, 80, 2000)["answered"] == 1
        wait_for(lambda: _metric(node, "weft_flows_dropped_total", network="weft", reason="disk-full") > before,
                 15, what="records dropped as disk-full")
        assert node.http("/healthz")[0] == 200 and node.status()["ready"]
        assert (node.status()["flows"] or {}).get("dropped", {}).get("disk-full", 0) >= 1
    finally:
        os.unlink(filler)
    sent = world.send(("y", "c"), "tcp", a.ip, 80, 2000)
    assert world.find(world.pods["y", "c"].ip, sent["port"], a.ip, 80, "tcp", node=node)


def test_policy_denials_is_a_view_of_the_denied_flow_records(world):
    a, e = world.pods["x", "a"], world.pods["x", "e"]
    sent = world.attempt(("x", "e"), "tcp", a.ip, 80)
    world.find(e.ip, None, a.ip, 80, "tcp", node=a.node)
    out = world.cluster.weftctl("policy", "denials", "--state-dir", a.node.state_dir,
                                "--flow-log-dir", world.flow_dir(a.node)).stdout
    assert f"ingress denied x/e ({e.ip}) -> x/a ({a.ip}) TCP/80 (isolated by x/from-y)" in out, out
    assert sent["answered"] == 0


def test_ipfix_export_reaches_a_real_collector(world, tmp_path):
    """FlowLog {"IPFIX": ...} set live; nfcapd (Debian's nfdump) collects on the underlay,
    nfdump reads back both one-way records of a connection with their counters, a denied
    attempt (one record: 1 packet, 0 bytes) and a long-lived connection's interim
    records (flowEndReason 2, active timeout) whose deltas add up to the journal's final
    counters.  (Debian 12's nfdump 1.7.1 does not decode forwardingStatus from IPFIX:
    the codec's test reads it back.)"""
    collected = tmp_path / "nfcapd"
    collected.mkdir()
    collector = subprocess.Popen(["ip", "netns", "exec", world.cluster.underlay.name, "nfcapd", "-b",
                                  "192.168.100.254", "-p", "4739", "-w", str(collected), "-t", "3600"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a, c, d, e = (world.pods[k] for k in (("x", "a"), ("y", "c"), ("y", "d"), ("x", "e")))
    node = a.node
    try:
        world.cluster.set_network("weft", dict(CONFIG, FlowLog={"IPFIX": "192.168.100.254:4739"}))
        wait_for(lambda: ((node.status().get("flows") or {}).get("ipfix") or {}).get("messages"), 20,
                 what="the agent sending IPFIX templates")
        sent = world.send(("y", "c"), "tcp", a.ip, 80, 50_000)
        (record,) = world.find(c.ip, sent["port"], a.ip, 80, "tcp", node=node)
        assert world.attempt(("x", "e"), "tcp", a.ip, 82)["answered"] == 0  # a tuple of its own: a new record
        world.find(e.ip, None, a.ip, 82, "tcp", node=node)
        held = world.send(("y", "d"), "tcp", a.ip, 80, 1000, 1, 2.5 * FLOW_INTERVAL)
        (final,) = world.find(d.ip, held["port"], a.ip, 80, "tcp", node=node)
        wait_for(lambda: (node.status()["flows"]["ipfix"] or {}).get("records", 0) >= 7, 10, what="records sent")
    finally:
        collector.terminate()
        collector.wait(timeout=10)
        world.cluster.set_network("weft", CONFIG)
    out = subprocess.run(["nfdump", "-R", str(collected), "-q", "-o", "fmt:%ra %pr %sa %sp %da %dp %pkt %byt %end"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split()[1:] for line in out.splitlines() if line.split()[:1] == [node.ip]]  # a's node exported
    forward = ["TCP", c.ip, str(sent["port"]), a.ip, "80", str(record["packets"]["sent"]),
               str(record["bytes"]["sent"]), "3"]
    backward = ["TCP", a.ip, "80", c.ip, str(sent["port"]), str(record["packets"]["received"]),
                str(record["bytes"]["received"]), "3"]
    assert forward in rows and backward in rows, out
    assert ["TCP", e.ip, "0", a.ip, "82", "1", "0", "3"] in rows, out
    held_rows = [r for r in rows if r[1:3] == [d.ip, str(held["port"])]]
    assert [r[7] for r in held_rows].count("2") >= 1 and held_rows[-1][7] == "3", out
    assert sum(int(r[5]) for r in held_rows) == final["packets"]["sent"], out
    assert sum(int(r[6]) for r in held_rows) == final["bytes"]["sent"], out


def test_weftctl_flows_follow_prints_new_records(world):
    import select

    a, c = world.pods["x", "a"], world.pods["y", "c"]
    dirs = [x for n in world.nodes for x in ("--dir", world.flow_dir(n))]
    follow = subprocess.Popen([os.path.join(world.cluster.installed, "bin", "weftctl"), "flows", *dirs, "--follow",
                               "--json", "--pod", "y/c"],
                              stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # its offsets taken: only what comes now is printed
        sent = world.send(("y", "c"), "tcp", a.ip, 80, 100)
        deadline = time.monotonic() + RECORD_WAIT
        seen = []
        while time.monotonic() < deadline and not any(r["sport"] == sent["port"] for r in seen):
            if select.select([follow.stdout], [], [], 0.5)[0]:
                seen.append(json.loads(follow.stdout.readline()))
            else:  # the closed connection's entry killed once TIME_WAIT is over
                world.expire_conntrack()
        assert any(r["sport"] == sent["port"] and r["srcPod"] == "y/c" for r in seen), seen
    finally:
        follow.terminate()
        follow.wait(timeout=10)


def test_an_invalid_flowlog_is_refused_with_the_key_named(world):
    refused = world.cluster.set_network_raw(dict(CONFIG, FlowLog={"IPFIX": "collector"}))
    assert refused.returncode != 0 and "FlowLog.IPFIX 'collector'" in refused.stderr, refused.stderr
    assert (world.nodes[0].status().get("flows") or {}).get("setting") == "on"  # the stored config stands


# -- a Service: the virtual IP and the backend --------------------------------------------
VIP, VIP_PORT = "10.96.0.10", 8080  # a ClusterIP outside the pod network, DNATed to x/a's port 80


@contextlib.contextmanager
def service(nodes, backend, tcp_port=80, udp_port=81):
    """A ClusterIP Service as kube-proxy programs it: on every node, in the node's own
    namespace, a table of the test's own (a unique name, deleted after) DNATs
    VIP:VIP_PORT (TCP and UDP) to backend:tcp_port / backend:udp_port before routing."""
    table = f"weft_test_svc_{secrets.token_hex(3)}"
    rules = (f"table ip {table} {{\n chain prerouting {{\n  type nat hook prerouting priority dstnat; policy accept;\n"
             f"  ip daddr {VIP} tcp dport {VIP_PORT} dnat to {backend}:{tcp_port}\n"
             f"  ip daddr {VIP} udp dport {VIP_PORT} dnat to {backend}:{udp_port}\n }}\n}}\n")
    made = []
    try:
        for node in nodes:
            node.ns.run(["nft", "-f", "-"], input=rules)
            made.append(node)
        yield
    finally:
        for node in made:
            node.ns.run(["nft", "delete", "table", "ip", table], check=False)


@pytest.mark.parametrize("src,node_count", [(("y", "c"), 1), (("y", "d"), 2)], ids=["same-node", "cross-node"])
def test_a_service_connection_names_the_virtual_ip_and_the_backend_pod(world, src, node_count):
    """The client's node translates VIP:8080 to x/a:80 (conntrack's original tuple has the
    VIP, the reply tuple the backend): its record has the backend in dst/dport/dstPod and
    the VIP in `service`; the backend's node (cross node) sees the translated connection."""
    a, client = world.pods["x", "a"], world.pods[src]
    with service(world.nodes, a.ip):
        sent = world.send(src, "tcp", VIP, VIP_PORT, 20_000)
        assert sent["answered"] == 1
        datagrams = world.send(src, "udp", VIP, VIP_PORT, 500, 3)
        assert datagrams["answered"] == 3
    records = world.find(client.ip, sent["port"], a.ip, 80, "tcp", count=node_count)
    assert sorted(r["node"] for r in records) == sorted({client.node.name, a.node.name})
    for record in records:
        assert record["verdict"] == "allowed" and record["srcPod"] == f"{src[0]}/{src[1]}"
        assert record["dstPod"] == "x/a" and record["dst"] == a.ip and record["dport"] == 80
        assert _close(record["bytes"]["sent"], 20_000 + record["packets"]["sent"] * TCP_HEADERS), record
    on_client = next(r for r in records if r["node"] == client.node.name)
    assert on_client["service"] == {"ip": VIP, "port": VIP_PORT}, on_client
    assert next(r for r in records if r["node"] == a.node.name)["policy"] == "x/from-y"
    (udp,) = world.find(client.ip, datagrams["port"], a.ip, 81, "udp", node=client.node, final=None)[-1:]
    assert udp["service"] == {"ip": VIP, "port": VIP_PORT} and udp["dstPod"] == "x/a"
    assert udp["packets"] == {"sent": 3, "received": 3}
    by_vip = world.weftctl_flows("--json", "--per-node", "--peer", f"{VIP}/32", "--port", str(sent["port"])).stdout
    assert [json.loads(line)["node"] for line in by_vip.splitlines()] == [client.node.name]


@pytest.mark.parametrize("src", [("x", "e"), ("x", "b")], ids=["same-node", "cross-node"])
def test_a_service_connection_the_policy_denies_names_the_backend_pod(world, src):
    """The drop comes after the translation: the denied record names the backend x/a
    (address, target port 83: a tuple no other test denies, so the record is this
    attempt's, and pod) and the isolating policy."""
    a, client = world.pods["x", "a"], world.pods[src]
    with service(world.nodes, a.ip, tcp_port=83):
        assert world.attempt(src, "tcp", VIP, VIP_PORT)["answered"] == 0
    record = world.find(client.ip, None, a.ip, 83, "tcp", node=a.node, timeout=10)[-1]
    assert record["verdict"] == "denied" and record["policy"] == "x/from-y" and record["direction"] == "ingress"
    assert record["srcPod"] == f"{src[0]}/{src[1]}" and record["dstPod"] == "x/a"


# -- an IPv6-only network -------------------------------------------------------------------
@pytest.mark.parametrize("src,node_count", [(("y", "c"), 1), (("y", "d"), 2)], ids=["same-node", "cross-node"])
def test_ipv6_only_allowed_tcp_and_udp_flows(world6, src, node_count):
    a, client = world6.pods["x", "a"], world6.pods[src]
    assert ":" in a.ip and len(a.ips) == 1
    sent = world6.send(src, "tcp", a.ip, 80, 100_000)
    assert sent["answered"] == 1
    records = world6.find(client.ip, sent["port"], a.ip, 80, "tcp", count=node_count)
    assert sorted(r["node"] for r in records) == sorted({client.node.name, a.node.name})
    for record in records:
        assert record["verdict"] == "allowed" and record["sport"] == sent["port"]
        assert record["srcPod"] == f"{src[0]}/{src[1]}" and record["dstPod"] == "x/a"
        assert _close(record["bytes"]["sent"], 100_000 + record["packets"]["sent"] * TCP6_HEADERS), record
    assert next(r for r in records if r["node"] == a.node.name)["policy"] == "x/from-y"
    datagrams = world6.send(src, "udp", a.ip, 81, 1000, 10)
    assert datagrams["answered"] == 10
    udp = world6.find(client.ip, datagrams["port"], a.ip, 81, "udp", node=a.node, final=None)[-1]
    assert udp["verdict"] == "allowed" and udp["policy"] == "x/from-y"
    assert udp["srcPod"] == f"{src[0]}/{src[1]}" and udp["dstPod"] == "x/a"
    assert udp["packets"] == {"sent": 10, "received": 10}
    assert udp["bytes"]["sent"] == 10 * (1000 + UDP6_HEADERS)


@pytest.mark.parametrize("src", [("x", "e"), ("x", "b")], ids=["same-node", "cross-node"])
def test_ipv6_only_denied_tcp_and_udp_flows(world6, src):
    a, client = world6.pods["x", "a"], world6.pods[src]
    for protocol, port in (("tcp", 80), ("udp", 81)):
        assert world6.attempt(src, protocol, a.ip, port)["answered"] == 0
        record = world6.find(client.ip, None, a.ip, port, protocol, node=a.node, timeout=10)[-1]
        assert record["verdict"] == "denied" and record["policy"] == "x/from-y"
        assert record["policies"] == ["x/from-y"] and record["direction"] == "ingress"
        assert record["srcPod"] == f"{src[0]}/{src[1]}" and record["dstPod"] == "x/a"
        assert record["packets"] == {"sent": 1, "received": 0}


def test_ipv6_only_neighbour_discovery_is_not_a_flow(world6):
    """Neighbour caches flushed, then traffic that needs ND (pod to pod on one bridge, pod
    to its gateway, across nodes): ND happened (the caches hold the neighbours again) and
    no record has an ICMPv6 ND type, a link-local or a multicast address."""
    a, c, d = world6.pods["x", "a"], world6.pods["y", "c"], world6.pods["y", "d"]
    for pod in (a, c, d):
        pod.ns.run(["ip", "-6", "neigh", "flush", "all"])
    for node in world6.nodes:
        node.ns.run(["ip", "-6", "neigh", "flush", "dev", "cbr0"])
    same = world6.send(("y", "c"), "tcp", a.ip, 80, 100)
    cross = world6.send(("y", "d"), "tcp", a.ip, 80, 100)
    assert same["answered"] == 1 and cross["answered"] == 1
    for pod in (a, c, d):  # solicited and answered again since the flush
        neighbours = pod.ns.ip_json("-6", "neigh", "show", "dev", "eth0")
        assert any("FAILED" not in n.get("state", []) for n in neighbours), neighbours
    world6.find(c.ip, same["port"], a.ip, 80, "tcp", node=a.node)
    world6.find(d.ip, cross["port"], a.ip, 80, "tcp", node=a.node)  # written after any ND of before
    world6.find(d.ip, cross["port"], a.ip, 80, "tcp", node=d.node)
    records = world6.records(final=None)
    assert records
    nd = [r for r in records if r["proto"] == "icmpv6" and 133 <= (r.get("icmp") or {}).get("type", 0) <= 137]
    odd = [r for r in records if any(ipaddress.ip_address(r[k]).is_link_local or ipaddress.ip_address(r[k]).is_multicast
                                     for k in ("src", "dst"))]
    assert nd == [] and odd == [], nd + odd


# -- FlowLog without bridged netfilter: a config problem, reported and not fatal ------------
READ_ONLY_BRIDGE_SYSCTLS = ("mount --bind /proc/sys/net/bridge /proc/sys/net/bridge && "
                            'mount -o remount,bind,ro /proc/sys/net/bridge && exec "$@"')


def test_flowlog_without_bridge_netfilter_is_a_reported_config_problem(world):
    """A third node where bridged frames skip netfilter (bridge-nf-call-iptables 0) and
    weftd, in a mount namespace of its own, cannot change that (the bridge sysctls
    read-only, as where br_netfilter is missing): FlowLog cannot be honoured.  The status's
    configProblems, weftctl status, the log (once) and weft_config_problem say so, naming
    the knob and the fix; the network stays ready and a pod starts; FlowLog off clears it;
    on again, the knob set by the operator, the agent's retry clears it."""
    cluster = world.cluster
    node = cluster.add_node()
    node.ns.run(["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0"])
    enter = ["ip", "netns", "exec", node.ns.name, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", READ_ONLY_BRIDGE_SYSCTLS, "read-only-bridge-sysctls"]
    knob = "/proc/sys/net/bridge/bridge-nf-call-iptables"

    def problem():
        return ((node.status() or {}).get("configProblems") or {}).get("FlowLog") or ""

    try:
        node.start_agent(enter=enter, extra=["--flow-log-dir", os.path.join(node.dir, "flows")])
        node.wait_ready()
        wait_for(lambda: knob in problem(), 30, what=f"{node.name} reporting the FlowLog problem")
        status = node.status()
        assert status["ready"] and status["problem"] is None, status
        assert "FlowLog" in problem() and "Read-only file system" in problem() and "writable /proc/sys" in problem()
        assert status["flows"]["problem"] == problem()
        shown = cluster.weftctl("status", "--run-dir", node.run_dir, check=False)
        assert shown.returncode == 0 and ": ready" in shown.stdout, shown.stdout
        assert f"config     FlowLog not honoured on this node: {problem()}" in shown.stdout, shown.stdout
        assert node.http("/readyz")[0] == 200
        assert _metric(node, "weft_config_problem", network="weft", key="FlowLog") == 1
        assert _metric(node, "weft_network_ready", network="weft") == 1
        pod = node.add_pod(conf=node.netconf(agentSocket=os.path.join(node.run_dir, "weftd.sock")), name="z",
                           pod_namespace="y")  # pods keep starting
        assert pod.ip and world.send_from(pod, "tcp", "192.168.100.254", 9000, 100)["answered"] == 1
        cni = os.path.join(cluster.installed, "cni")
        assert invoke(f"{cni}/weft", "STATUS", node.netconf(cniVersion="1.1.0"), cni_path=cni, node=node.ns).code == 0

        cluster.set_network("weft", dict(CONFIG, FlowLog=False))
        wait_for(lambda: (node.status() or {}).get("configProblems") == {}, 20, what="cleared with FlowLog off")
        assert _metric(node, "weft_config_problem", network="weft", key="FlowLog") == 0

        cluster.set_network("weft", CONFIG)
        wait_for(lambda: knob in problem(), 20, what="the problem again with FlowLog on")
        node.ns.run(["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1",
                     "net.bridge.bridge-nf-call-ip6tables=1"])  # the operator's fix, outside the agent
        wait_for(lambda: (node.status() or {}).get("configProblems") == {}, 20,
                 what="the agent's retry clearing the problem")
        assert _metric(node, "weft_config_problem", network="weft", key="FlowLog") == 0
        with open(node.log_path) as handle:
            log = handle.read()
        assert log.count("same-node (bridged) connections are not seen") == 2, log  # once each time FlowLog came on
    finally:
        node.stop_agent()
        cluster.set_network("weft", CONFIG)
    for other in world.nodes:
        wait_for(lambda: (other.status().get("flows") or {}).get("journal"), 10, what=f"{other.name} flow log on")
