"""The weft demo: a 3-node cluster on this machine, two pods per node.

etcd runs in an 'underlay' namespace; each node is a namespace on the underlay
bridge running its own weftd; pods are namespaces attached by the real `weft`
executable inside their node.  Prints the cross-node ping matrix and the leases,
then applies a NetworkPolicy (only pods labelled app=web may reach the app=db pod)
and shows a flow going from allowed to denied while the web pod still gets through,
with `weftctl policy explain`; with FlowLog on, `weftctl flows` then prints the denied
flow found from node3-pod0's name and the flow records of both TCP connections to the
db pod (docs/flows.md, the worked example); then removes everything it made.

`--family ipv6` (make demo DEMO_FAMILY=ipv6) runs the same on an IPv6-only network
(EnableIPv4 false): pods with only IPv6 addresses, leases keyed by IPv6 subnets.  The
underlay stays IPv4 here.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import yaml

from lab.cluster import Cluster, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME_WAIT = 2     # seconds, in the demo's node namespaces: its TCP flow records come seconds after the close
RECORD_WAIT = 90  # seconds a TCP record may take: TIME_WAIT and the kernel's conntrack garbage collection
NODES, PODS_PER_NODE = 3, 2
NETWORKS = {
    "ipv4": {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1},
             "FlowLog": True},
    "ipv6": {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd10:244::/48", "IPv6SubnetLen": 64,
             "Backend": {"Type": "vxlan", "VNI": 1}, "FlowLog": True},
}


POLICY = [
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "default", "name": "node1-pod0",
                                                      "labels": {"app": "db"}}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "default", "name": "node2-pod0",
                                                      "labels": {"app": "web"}}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"namespace": "default", "name": "db-from-web"},
     "spec": {"podSelector": {"matchLabels": {"app": "db"}},
              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}},
]


def policy_demo(cluster, nodes, pods, work) -> bool:
    """A flow from allowed to denied: node3-pod0 -> node1-pod0 (db) once db-from-web is applied."""
    db, web, other = pods[0], pods[2], pods[4]
    for node in nodes:  # the agents learn the pods from the published allocation records
        wait_for(lambda: ((node.status() or {}).get("policy") or {}).get("knownPods", 0) >= len(pods), 30,
                 what=f"{node.name} knowing every pod")
    before = other.ping(db.ip)
    print(f"\nflow default/node3-pod0 -> default/node1-pod0 (ping {db.ip}) before the policy: "
          f"{'allowed' if before else 'DENIED (unexpected)'}")
    path = os.path.join(work, "policy.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump_all(POLICY, handle)
    print("$ weftctl apply -f policy.yaml\n" + cluster.weftctl("apply", "-f", path).stdout)
    try:
        wait_for(lambda: not other.ping(db.ip, wait=1), 30, interval=0.2,
                 what="the flow node3-pod0 -> node1-pod0 denied")
        after = False
    except TimeoutError:
        after = True
    web_ok = web.ping(db.ip)
    print(f"flow default/node3-pod0 -> default/node1-pod0 after the policy: {'ALLOWED (unexpected)' if after else 'denied'}")
    print(f"flow default/node2-pod0 (app=web) -> default/node1-pod0 after the policy: "
          f"{'allowed' if web_ok else 'DENIED (unexpected)'}")
    explain = cluster.weftctl("policy", "explain", "default/node3-pod0", "default/node1-pod0", check=False).stdout
    print("$ weftctl policy explain default/node3-pod0 default/node1-pod0\n" + explain)
    return before and not after and web_ok


def flows_demo(cluster, nodes, pods) -> bool:
    """TCP to the db pod from web (allowed) and from node3-pod0 (denied), then the records."""
    db, web, other = pods[0], pods[2], pods[4]
    sink = subprocess.Popen(["ip", "netns", "exec", db.ns.name, sys.executable, "-m", "lab.flow_traffic", "sink",
                             db.ip, "80"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        sink.stdout.readline()
        for pod in (web, other):
            pod.ns.run([sys.executable, "-m", "lab.flow_traffic", "send", "tcp", db.ip, "80", "10000"],
                       cwd=REPO, check=False, timeout=30)
        dirs = [a for node in nodes for a in ("--dir", os.path.join(node.dir, "flows"))]
        # the policy is decided on the db pod's node (ingress): wait for that node's half, since the
        # source node's record alone reads "ALLOWED by -" until the two halves merge
        decided = "by default/db-from-web"
        shown = [_flows(cluster, dirs, ("--pod", "default/node3-pod0", "--verdict", "denied"), (f"DENIED {decided}",)),
                 _flows(cluster, dirs, ("--pod", "default/node1-pod0", "--port", "80"),
                        (f"ALLOWED {decided}", f"DENIED {decided}"))]
        return all(shown)
    finally:
        sink.kill()
        sink.wait()


def _flows(cluster, dirs, filters, verdicts) -> bool:
    """Print `weftctl flows <filters>` over every node's journal once it shows a record
    of each verdict (docs/flows.md, the worked example); False when it never does."""
    def records():
        out = cluster.weftctl("flows", *dirs, *filters).stdout
        return out if all(v in out for v in verdicts) else None
    try:
        shown = wait_for(records, RECORD_WAIT, interval=0.5, what=f"flow records for {' '.join(filters)}")
    except TimeoutError:
        shown = None
    print(f"$ weftctl flows --dir <node1> --dir <node2> --dir <node3> {' '.join(filters)}\n"
          + (shown or "(no records: UNEXPECTED)"))
    return shown is not None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.cluster")
    parser.add_argument("--family", choices=sorted(NETWORKS), default="ipv4",
                        help="the pod network's address family (ipv6: an IPv6-only network)")
    family = parser.parse_args(argv).family
    if os.geteuid() != 0:
        print("make demo needs root: it creates network namespaces", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="weft-demo-")
    subprocess.run(["make", "-s", "-C", REPO, "install", f"VENV={sys.prefix}",
                    f"CNI_BIN_DIR={work}/install/cni", f"BIN_DIR={work}/install/bin"], check=True,
                   stdout=subprocess.DEVNULL)
    cluster = Cluster(os.path.join(work, "cluster"), os.path.join(work, "install"))
    ok = True
    made = []
    try:
        cluster.set_network("weft", NETWORKS[family])
        nodes = [cluster.add_node() for _ in range(NODES)]
        for node in nodes:  # a TCP record comes when conntrack forgets the connection: TIME_WAIT after its close
            node.ns.set_tcp_time_wait(TIME_WAIT)
            node.start_agent(extra=["--flow-log-dir", os.path.join(node.dir, "flows")])
        for node in nodes:
            node.wait_ready()
            wait_for(lambda: len(node.status()["peers"]) == NODES - 1, 20, what=f"{node.name} peers")
        pods = [node.add_pod(name=f"{node.name}-pod{i}") for node in nodes for i in range(PODS_PER_NODE)]
        print(cluster.weftctl("leases", "weft").stdout)
        width = max(len(f"{p.node.name}/{p.ip}") for p in pods)
        cell = max(12, *(len(p.ip) for p in pods))
        print("cross-node ping matrix (rows ping columns):")
        print(" " * width + "  " + "  ".join(f"{p.ip:>{cell}}" for p in pods))
        for src in pods:
            cells = []
            for dst in pods:
                if dst is src:
                    cells.append(f"{'-':>{cell}}")
                    continue
                reached = src.ping(dst.ip)
                ok &= reached
                cells.append(f"{'ok' if reached else 'FAILED':>{cell}}")
            print(f"{src.node.name + '/' + src.ip:<{width}}  " + "  ".join(cells))
        ok &= policy_demo(cluster, nodes, pods, work)
        ok &= flows_demo(cluster, nodes, pods)
        status = nodes[0].ns.run([f"{cluster.installed}/bin/weftctl", "status", "--run-dir",
                                  nodes[0].run_dir], check=False).stdout
        print("\nweftctl status on node1:\n" + status)
    finally:
        made = cluster.namespace_names()
        cluster.cleanup()
        subprocess.run(["rm", "-rf", work], check=False)
    print(json.dumps({"demo": "cluster", "family": family, "nodes": NODES, "pods": NODES * PODS_PER_NODE,
                      "result": "ok" if ok else "FAILED", "namespaces": made}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
