"""NetworkPolicy figures: change -> enforced on every node, ADD and pod-to-pod TCP with
policies vs without, and the agents' RSS, on one cluster with a synthetic population.

A lab.cluster of N nodes (default 2) running weftd.  bench.lease_writer (inside the
underlay) stores `pods` Pod objects (labels app=a<i mod 50>, namespaces ns0..ns9) and
their allocation records (addresses in the nodes' real subnets, as the history
controller publishes them), then `policies` NetworkPolicies (each selecting one app
label of its namespace, ingress from another app label on TCP 80).
  change -> enforced: one policy's port is changed (a table rebuild: the worst case);
      from just before the etcd write to the moment each node's status file reports
      that write's revision as its policy generation (the generation the kernel table
      has taken in; each file polled every 5 ms).
  ADD:  p50 of ADD through the agent on one node with the policies stored and with them
      deleted (the same agent and pod population), in interleaved rounds.
  TCP:  new TCP connections per second between two real pods on different nodes, with
      and without the policies, interleaved the same way (the pods are selected by none:
      what is measured is the table's lookups on every new connection).
"""

import json
import os
import subprocess
import sys
import time

from lab.cluster import Cluster, wait_for

from .context import percentile, rss_mib
from .convergence import Writer, _stats, teardown

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETWORK = {"Network": "10.64.0.0/10", "SubnetLen": 20, "Backend": {"Type": "vxlan", "VNI": 1}}
APPS, NAMESPACES = 50, 10
ROUNDS = 3


def _wait_policies(nodes, count: int):
    """Every node's status reports `count` policies programmed."""
    for node in nodes:
        wait_for(lambda: _policy_status(node).get("policies") == count, 120,
                 what=f"{node.name} holding {count} policies")


def _policy(index: int, port: int) -> tuple:
    ns = f"ns{index % NAMESPACES}"
    doc = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": f"p{index}", "namespace": ns},
           "spec": {"podSelector": {"matchLabels": {"app": f"a{index % APPS}"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"a{(index + 1) % APPS}"}}}],
                                 "ports": [{"port": port}]}]}}
    return ["NetworkPolicy", ns, f"p{index}", json.dumps(doc)]


def _population(writer, nodes, pods: int):
    items = [["Namespace", None, f"ns{i}", json.dumps({"kind": "Namespace", "metadata": {"name": f"ns{i}"}})]
             for i in range(NAMESPACES)]
    per_node = {node.name: [] for node in nodes}
    for i in range(pods):
        node = nodes[i % len(nodes)]
        ns, name = f"ns{i % NAMESPACES}", f"pod{i}"
        items.append(["Pod", ns, name, json.dumps({"kind": "Pod", "metadata": {
            "namespace": ns, "name": name, "labels": {"app": f"a{i % APPS}"}}})])
        import ipaddress
        subnet = ipaddress.ip_network(node.status()["lease"]["subnet"])
        ip = subnet.network_address + 100 + i // len(nodes)
        per_node[node.name].append({"ts": "2026-01-01T00:00:00.%06dZ" % i, "event": "allocate", "ip": str(ip),
                                    "network": "weft", "containerID": f"bench{i}", "ifname": "eth0",
                                    "podNamespace": ns, "podName": name})
    writer.ask(op="put_objects", items=items)
    for node_name, records in per_node.items():
        writer.ask(op="put_history", network="weft", node=f"{node_name}-bench", records=records)


def _policy_status(node) -> dict:
    return (node.status() or {}).get("policy") or {}


def _add_del_ms(node, count: int) -> list:
    conf = node.netconf(agentSocket=os.path.join(node.run_dir, "weftd.sock"))
    times = []
    for _ in range(count):
        started = time.monotonic()
        pod = node.add_pod(conf=conf, pod_namespace="ns0")
        times.append((time.monotonic() - started) * 1000.0)
        node.delete_pod(pod, conf=conf)
        node.pods.remove(pod)
        pod.ns.delete()
    return times


def _tcp_rate(client, server, seconds: float) -> float:
    """Connections per second from client to server (lab.tcp_echo ask in a loop)."""
    proc = server.serve_tcp(8080, 100000)
    code = ("import socket, sys, time\n"
            "end = time.monotonic() + float(sys.argv[2]); n = 0\n"
            "while time.monotonic() < end:\n"
            "    s = socket.create_connection((sys.argv[1], 8080), timeout=5); s.sendall(b'x'); s.recv(64); s.close(); n += 1\n"
            "print(n / float(sys.argv[2]))\n")
    try:
        out = client.ns.run([sys.executable, "-c", code, server.ip, str(seconds)], timeout=seconds + 60).stdout
        return float(out.strip())
    finally:
        proc.kill()
        proc.wait()


def policy(ctx, node_count: int, pods: int, policies: int, changes: int, adds: int) -> dict:
    ctx.say(f"policy: {node_count} nodes, {pods} pods, {policies} policies, {changes} changes")
    cluster = Cluster(os.path.join(ctx.work, "policy-cluster"), ctx.installed, reconcile_interval=10.0)
    writer, nodes = None, []
    try:
        cluster.set_network("weft", NETWORK)
        nodes = [cluster.add_node() for _ in range(node_count)]
        for node in nodes:
            node.start_agent()
        for node in nodes:
            node.wait_ready(timeout=120)
            wait_for(lambda: _policy_status(node).get("state") == "enforcing", 60, what=f"{node.name} enforcing")
        client, server = nodes[0].add_pod(pod_namespace="bench"), nodes[1].add_pod(pod_namespace="bench")
        writer = Writer(cluster)
        _population(writer, nodes, pods)
        answer = writer.ask(op="put_objects", items=[_policy(i, 80) for i in range(policies)])
        for node in nodes:
            wait_for(lambda: _policy_status(node).get("generation", 0) >= answer["revision"]
                     and _policy_status(node).get("knownPods", 0) >= pods, 180,
                     what=f"{node.name} holding {pods} pods and {policies} policies")
        rules = max(_policy_status(n).get("rules", 0) for n in nodes)
        latencies, missing = [], 0
        for k in range(changes):
            answer = writer.ask(op="put_objects", items=[_policy(k % policies, 1000 + k)])
            revision = int(answer["revision"])
            seen = {}

            def all_seen():  # each node's status file reports the generation it enforces
                for node in nodes:
                    if node.name not in seen and _policy_status(node).get("generation", 0) >= revision:
                        seen[node.name] = time.time()
                return len(seen) == len(nodes)

            try:
                wait_for(all_seen, 30, interval=0.005, what=f"policy generation {revision} on every node")
            except TimeoutError:
                missing += 1
                continue
            latencies.extend((t - answer["t0"]) * 1000.0 for t in seen.values())
        rss = [v for v in (rss_mib(n.agent.pid) for n in nodes if n.agent is not None) if v is not None]
        stored = [_policy(i, 80) for i in range(policies)]
        baseline_add, policy_add, baseline_tcp, policy_tcp = [], [], [], []
        for _ in range(ROUNDS):  # interleaved: a busy machine weighs on both sides alike
            policy_add += _add_del_ms(nodes[0], max(1, adds // ROUNDS))
            policy_tcp.append(_tcp_rate(client, server, 1))
            writer.ask(op="delete_objects", items=[item[:3] for item in stored])
            _wait_policies(nodes, 0)
            baseline_add += _add_del_ms(nodes[0], max(1, adds // ROUNDS))
            baseline_tcp.append(_tcp_rate(client, server, 1))
            writer.ask(op="put_objects", items=stored)
            _wait_policies(nodes, policies)
        baseline_tcp, policy_tcp = sorted(baseline_tcp)[ROUNDS // 2], sorted(policy_tcp)[ROUNDS // 2]
        rss += [v for v in (rss_mib(n.agent.pid) for n in nodes if n.agent is not None) if v is not None]
        return {"nodes": node_count, "pods": pods, "policies": policies, "rules_per_node": rules,
                "change_to_enforced": {**_stats(latencies), "changes": changes, "missing": missing},
                "add_p50_ms": {"no_policy": round(percentile(baseline_add, 50), 1),
                               "policies": round(percentile(policy_add, 50), 1),
                               "ratio": round(percentile(policy_add, 50) / percentile(baseline_add, 50), 3)},
                "tcp_connections_per_s": {"no_policy": round(baseline_tcp, 1), "policies": round(policy_tcp, 1),
                                          "ratio": round(policy_tcp / baseline_tcp, 3) if baseline_tcp else None},
                "agent_rss_mib": {"max": max(rss) if rss else None}}
    finally:
        teardown(ctx, cluster, writer, nodes)
