"""Node-wide masquerade owned by weftd (agent/controllers/masquerade.py): real etcd,
real agents, traffic checked by the source address a server sees, the table read back
with the `nft` tool (an oracle apart from weft's in-process libnftables binding)."""

import json
import os
import time

from lab.cli_helpers import metric_value
from lab.cluster import ETCD_IP, serve_tcp, wait_for

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
TABLE = "weft_weft"


def start(cluster, count):
    return cluster.start_nodes(count, VXLAN)


def fast_conf(node, **extra):
    return node.netconf(agentSocket=os.path.join(node.run_dir, "weftd.sock"), **extra)


def table(node):
    out = node.ns.run(["nft", "-j", "list", "table", "inet", TABLE], check=False)
    return json.loads(out.stdout)["nftables"] if out.returncode == 0 else None


def sets(objects) -> dict:
    found = {}
    for item in objects or []:
        if "set" in item:
            found[item["set"]["name"]] = sorted(
                f"{e['prefix']['addr']}/{e['prefix']['len']}" if isinstance(e, dict) else str(e)
                for e in item["set"].get("elem", []))
    return found


def handles(objects) -> list:
    return [(kind, item[kind]["handle"]) for item in objects or [] for kind in ("table", "set", "chain", "rule")
            if kind in item]


def node_wide(node) -> bool:
    """The table says: this node's subnet, masqueraded unless bound for 10.244.0.0/16."""
    found = sets(table(node))
    return (found.get("src4") == [node.status()["lease"]["subnet"]]
            and found.get("nomasq4") == ["10.244.0.0/16", "224.0.0.0/4"]
            and len([i for i in table(node) if "rule" in i]) == 2)


def test_agent_masquerades_leaving_traffic_and_not_pod_to_pod(cluster):
    nodes = start(cluster, 2)
    for node in nodes:
        wait_for(lambda: node_wide(node), 20, what=f"node-wide masquerade table on {node.name}")
    before = handles(table(nodes[0]))
    a = nodes[0].add_pod(conf=fast_conf(nodes[0], logLevel="debug"))
    b = nodes[1].add_pod(conf=fast_conf(nodes[1]))
    server = serve_tcp(cluster.underlay, ETCD_IP, 7200, 1)  # outside the cluster network
    assert a.tcp(ETCD_IP, 7200) == nodes[0].ip, "pod -> outside was not masqueraded to the node's address"
    server.wait(timeout=10)
    server = b.serve_tcp(7201, 1)
    assert a.tcp(b.ip, 7201) == a.ip, "pod -> pod across nodes lost the pod's source address"
    server.wait(timeout=10)
    assert nodes[0].delete_pod(a, conf=fast_conf(nodes[0], logLevel="debug")).code == 0
    assert handles(table(nodes[0])) == before, "an ADD/DEL through the agent changed the table"
    with open(os.path.join(nodes[0].dir, "weft.log")) as handle:
        lines = [json.loads(line) for line in handle]
    add, delete = [e for e in lines if e.get("via") == "agent"]
    assert add["command"] == "ADD" and {"ipam", "veth", "container", "masquerade"} <= set(add["steps"]), add
    # the DEL's caller waits for the cut-off only (plugin/teardown.py: the rest runs in weftd's background)
    assert delete["command"] == "DEL" and {"config", "cut-off"} <= set(delete["steps"]), delete


def test_table_survives_restart_and_reconcile_repairs_drift(cluster):
    node, = start(cluster, 1)
    wait_for(lambda: node_wide(node), 20, what="node-wide masquerade table")
    pod = node.add_pod(conf=fast_conf(node))
    before = handles(table(node))
    node.stop_agent()
    assert handles(table(node)) == before, "SIGTERM must leave the masquerade table in place"
    restarted = time.time()
    node.start_agent()
    # wait for the new agent's own check, not just any status file
    wait_for(lambda: (((node.status() or {}).get("masquerade") or {}).get("lastCheck") or 0) > restarted
             and node.status()["ready"], 20, what="the restarted agent checked the masquerade table")
    assert handles(table(node)) == before, "a restarted agent rebuilt a table that was right"
    assert node.status()["masquerade"]["driftRepaired"] == 0

    node.ns.run(["nft", "delete", "table", "inet", TABLE])
    wait_for(lambda: table(node) is not None and node_wide(node), 20, what="deleted table recreated")
    wait_for(lambda: node.status()["masquerade"]["driftRepaired"] == 1, 20, what="drift counted once")
    rule = next(i["rule"]["handle"] for i in table(node) if "rule" in i)
    node.ns.run(["nft", "delete", "rule", "inet", TABLE, "postrouting", "handle", str(rule)])
    wait_for(lambda: node_wide(node), 20, what="deleted rule put back")
    wait_for(lambda: node.status()["masquerade"]["driftRepaired"] == 2, 20, what="second drift counted")
    _, metrics = node.http("/metrics")
    assert metric_value(metrics, 'weft_drift_repaired_total{network="weft"}') >= 2
    assert "reconcile repaired masquerade table" in node.log()
    status = cluster.weftctl("status", "--run-dir", node.run_dir).stdout
    assert "masquerade inet weft_weft: installed, 2 repairs since start" in status, status
    server = serve_tcp(cluster.underlay, ETCD_IP, 7202, 1)
    assert pod.tcp(ETCD_IP, 7202) == node.ip, "after repair, pod -> outside is not masqueraded"
    server.wait(timeout=10)


def test_table_goes_with_the_network(cluster):
    node, = start(cluster, 1)
    wait_for(lambda: node_wide(node), 20, what="node-wide masquerade table")
    cluster.etcd.etcdctl("del", "/weft/networks/weft/config", check=True)
    wait_for(lambda: table(node) is None, 20, what="table removed after the network config left etcd")
    wait_for(lambda: node.status()["masquerade"]["state"] == "absent", 20, what="status says absent")
    assert "masquerade table weft_weft removed: the network config left etcd" in node.log()


def test_agent_replaces_the_per_pod_table_of_an_older_weft(cluster):
    """Upgrade: the node still has the per-pod `inet weft_weft` of weft before issue 14."""
    cluster.set_network("weft", VXLAN)
    node = cluster.add_node()
    node.ns.run(["nft", "-f", "-"], input="""table inet weft_weft {
  set pods4 { type ipv4_addr; elements = { 10.244.9.9 comment "old/eth0" } }
  set nomasq4 { type ipv4_addr; flags interval; elements = { 10.244.0.0/16 } }
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    ip saddr @pods4 ip daddr != @nomasq4 masquerade
  }
}
""")
    node.start_agent()
    node.wait_ready()
    wait_for(lambda: node_wide(node), 20, what="legacy table replaced by the node-wide one")
    assert "pods4" not in sets(table(node))
    assert "replaced the per-pod table of an older weft" in node.log()
