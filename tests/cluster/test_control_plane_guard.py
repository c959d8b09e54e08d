"""The control plane is out of pods' reach (agent/controllers/control_guard.py): real
etcd members, real agents, pods attached by the real plugin, and the guard judged by
what happens on the wire (a connection made or refused, a datagram received or not)
and by the kernel's table read back with the `nft` tool, never by weft's own reading.

Every etcd member sits in the underlay namespace (192.168.100.254, .253, .252); a
pod reaches it through its node, masqueraded as the node, exactly as it would reach
any address outside the cluster network."""

import json
import os
import subprocess
import sys
import time

from lab.cli_helpers import metric_value
from lab.cluster import ETCD_IP, REPO, Cluster, serve_tcp, wait_for

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
TABLE = "weft_control_weft"
ETCD_PORT = 2379
REFUSED = 'weft_control_plane_refused_total{network="weft"}'
DRIFT = 'weft_drift_repaired_total{network="weft"}'


# -- helpers --------------------------------------------------------------------------
def table(node):
    out = node.ns.run(["nft", "-j", "list", "table", "inet", TABLE], check=False)
    return json.loads(out.stdout)["nftables"] if out.returncode == 0 else None


def elements(node, name):
    """The elements of one set as nft prints them (concatenations joined with ' . ')."""
    for item in table(node) or []:
        if "set" in item and item["set"]["name"] == name:
            out = []
            for elem in item["set"].get("elem", []):
                if isinstance(elem, dict) and "concat" in elem:
                    elem = " . ".join(str(p) for p in elem["concat"])
                elif isinstance(elem, dict) and "prefix" in elem:
                    elem = f"{elem['prefix']['addr']}/{elem['prefix']['len']}"
                out.append(str(elem))
            return sorted(out)
    return None


def handles(objects) -> list:
    return [(kind, item[kind]["handle"]) for item in objects or [] for kind in ("table", "set", "chain", "rule")
            if kind in item]


def metric(node, series):
    _, text = node.http("/metrics")
    return metric_value(text, series)


def guard(node):
    return (node.status() or {}).get("controlPlane") or {}


def guarded(node):
    return guard(node).get("state") == "installed" and table(node) is not None


def reaches(ns, address, port=ETCD_PORT):
    """Whether a TCP connection from namespace `ns` to address:port is accepted (etcd and
    weftd listen there: the connection itself is the test; a dropped SYN times out)."""
    code = ("import socket, sys\n"
            "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n"
            "except OSError:\n sys.exit(1)\n")
    return ns.run([sys.executable, "-c", code, address, str(port)], check=False).returncode == 0


def journal(node):
    where = os.path.join(node.state_dir, "weft", "policy-denials.jsonl")
    try:
        with open(where) as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except OSError:
        return []


def control_records(node):
    return [r for r in journal(node) if r.get("kind") == "control-plane"]


def set_access(cluster, entries):
    cluster.set_network("weft", {**VXLAN, "ControlPlaneAccess": entries})


def listen_udp(pod, port, seconds):
    """lab.spoof's UDP listener in the pod; returns the process once it is bound."""
    proc = subprocess.Popen(["ip", "netns", "exec", pod.ns.name, sys.executable, "-m", "lab.spoof", "listen",
                             pod.ip, str(port), str(seconds)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "listening"
    return proc


def received(proc):
    out, _ = proc.communicate(timeout=30)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def vtep_mac(node):
    (link,) = node.ns.ip_json("link", "show", "dev", "weft.1")
    return link["address"]


def inject(ns, node_ip, mac, forged, target, port, payload):
    """A VXLAN datagram from namespace `ns` to node_ip:8472 carrying a frame from
    `forged` to target:port (lab/vxlan_inject.py)."""
    return ns.run([sys.executable, "-m", "lab.vxlan_inject", node_ip, "8472", "1", mac, forged, target,
                   str(port), payload], cwd=REPO)


# -- tests ----------------------------------------------------------------------------
def test_a_pod_cannot_inject_frames_into_the_overlay(cluster):
    """A pod on node1 sends node2's VXLAN port a frame claiming another pod's source:
    the node itself can (that is how the overlay works), the pod cannot."""
    n1, n2 = cluster.start_nodes(2, VXLAN)
    attacker, bystander = n1.add_pod(), n1.add_pod()
    target = n2.add_pod()
    wait_for(lambda: guarded(n1), 20, what="control-plane table on node1")
    mac = vtep_mac(n2)
    # the oracle: the same datagram sent by node1 itself is delivered with the forged source
    listener = listen_udp(target, 7300, 3)
    inject(n1.ns, n2.ip, mac, bystander.ip, target.ip, 7300, "from-node")
    assert [d["src"] for d in received(listener)] == [bystander.ip], "the crafted frame is not deliverable"
    # from the pod: dropped on node1 before masquerade, counted
    listener = listen_udp(target, 7300, 3)
    before = metric(n1, REFUSED)
    inject(attacker.ns, n2.ip, mac, bystander.ip, target.ip, 7300, "from-pod")
    assert received(listener) == [], "a pod injected a frame into the overlay"
    wait_for(lambda: metric(n1, REFUSED) > before, 20, what="the injection counted")
    wait_for(lambda: any(r["target"] == "overlay" and r["srcPod"] == f"default/{attacker.ns.name}"
                         for r in control_records(n1)), 20, what="the injection journalled")
    record = next(r for r in control_records(n1) if r["target"] == "overlay")
    assert (record["src"], record["dst"], record["protocol"], record["port"]) == \
        (attacker.ip, n2.ip, "UDP", 8472), record


def test_pods_cannot_reach_any_etcd_member_unless_named(tmp_path, installed):
    """Three etcd members: the node reaches each, a pod reaches none (counted, journalled
    with the pod's name); ControlPlaneAccess lets a named pod (or a namespace) through,
    live, and taking the entry away refuses it again."""
    cluster = Cluster(tmp_path / "cluster", installed, etcd_members=3)
    try:
        node, = cluster.start_nodes(1, VXLAN)
        wait_for(lambda: guarded(node), 20, what="control-plane table")
        members = [m.host for m in cluster.etcd.members]
        assert len(set(members)) == 3
        assert elements(node, "etcd4") == sorted(f"{h} . {ETCD_PORT}" for h in members)
        assert sorted(guard(node)["endpoints"]) == sorted(f"{h}:{ETCD_PORT}" for h in members)
        app = node.add_pod(name="app", pod_namespace="default")
        backup = node.add_pod(name="etcd-backup", pod_namespace="ops")
        for host in members:
            assert reaches(node.ns, host), f"the node itself cannot reach etcd at {host}"
            assert not reaches(app.ns, host), f"a pod reached etcd at {host}"
        # the rest of the pod's traffic is untouched: pod -> pod, pod -> outside (masqueraded)
        server = backup.serve_tcp(7201, 1)
        assert app.tcp(backup.ip, 7201) == app.ip
        server.wait(timeout=10)
        server = serve_tcp(cluster.underlay, ETCD_IP, 7200, 1)  # etcd's address, another port
        assert app.tcp(ETCD_IP, 7200) == node.ip, "pod -> outside no longer masqueraded"
        server.wait(timeout=10)

        wait_for(lambda: {r["dst"] for r in control_records(node) if r["srcPod"] == "default/app"}
                 == set(members), 20, what="a journal record per member naming the pod")
        for record in control_records(node):
            assert (record["node"], record["network"], record["direction"], record["src"], record["protocol"],
                    record["port"], record["target"], record["dstPod"]) == \
                ("node1", "weft", "egress", app.ip, "TCP", ETCD_PORT, "etcd", None), record
        assert len(control_records(node)) == 3, "a flow was journalled more than once"
        assert metric(node, REFUSED) >= 3
        wait_for(lambda: guard(node).get("refused", 0) >= 3, 20, what="refusals in the status")
        assert "control-plane guard refused default/app" in node.log()
        status = cluster.weftctl("status", "--run-dir", node.run_dir).stdout
        assert "control    inet weft_control_weft: installed, 3 etcd endpoint(s)" in status, status
        assert "let through: none" in status, status
        denials = cluster.weftctl("policy", "denials", "--state-dir", node.state_dir).stdout
        assert f"node1 weft: control plane refused default/app ({app.ip}) -> {members[0]} TCP/{ETCD_PORT} " \
            "(etcd; not in ControlPlaneAccess)" in denials, denials

        # a bad entry is refused where the config is set, naming the key and the entry
        refused = cluster.set_network_raw({**VXLAN, "ControlPlaneAccess": ["ops/etcd-backup", "Ops/x"]})
        assert refused.returncode != 0 and "ControlPlaneAccess[1] 'Ops/x'" in refused.stderr, refused.stderr

        set_access(cluster, ["ops/etcd-backup"])
        wait_for(lambda: elements(node, "allowed4") == [backup.ip], 20, what="the named pod let through")
        for host in members:
            assert reaches(backup.ns, host), f"the named pod cannot reach etcd at {host}"
        assert not reaches(app.ns, members[0]), "a pod not named reached etcd"
        status = cluster.weftctl("status", "--run-dir", node.run_dir).stdout
        assert "let through: ops/etcd-backup" in status, status
        # a Service VIP in front of etcd (a DNAT as kube-proxy would write it, in the node's
        # own namespace): the guard sees the real destination
        node.ns.run(["nft", "-f", "-"], input=f"""table ip svc_test {{
  chain pre {{ type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.96.0.1 tcp dport 443 dnat to {members[0]}:{ETCD_PORT}
  }}
}}
""")
        assert reaches(backup.ns, "10.96.0.1", 443), "the Service VIP does not lead to etcd"
        before = metric(node, REFUSED)
        assert not reaches(app.ns, "10.96.0.1", 443), "a pod reached etcd through a Service VIP"
        wait_for(lambda: metric(node, REFUSED) > before, 20, what="the VIP refusal counted")

        set_access(cluster, ["ops/*"])  # a pod named by it, added through the agent, is let
        wait_for(lambda: guard(node).get("exceptions") == ["ops/*"], 20, what="the new entry taken in")
        restore = node.add_pod(name="etcd-restore", pod_namespace="ops", conf=node.netconf(
            agentSocket=os.path.join(node.run_dir, "weftd.sock")))
        # in the table when ADD returns (the agent took it in before the pod had an interface)
        assert restore.ip in elements(node, "allowed4"), "a named pod waits for the next reconcile"
        assert reaches(restore.ns, members[0]), "a named pod was refused right after its ADD"
        wait_for(lambda: elements(node, "allowed4") == sorted([backup.ip, restore.ip]), 20,
                 what="both ops pods let through")

        set_access(cluster, ["default/*"])  # another namespace
        wait_for(lambda: elements(node, "allowed4") == [app.ip], 20, what="the namespace let through")
        assert reaches(app.ns, members[1]) and not reaches(backup.ns, members[1])

        set_access(cluster, [])  # taken away: refused again
        wait_for(lambda: elements(node, "allowed4") == [], 20, what="the exception withdrawn")
        assert not reaches(app.ns, members[2]), "a pod kept its etcd access after the entry went"
        assert guard(node)["driftRepaired"] == 0, "a config change was counted as drift"
        assert "network config change applied live: ControlPlaneAccess" in node.log()
    finally:
        cluster.cleanup()


def test_pods_cannot_reach_weftd_on_any_node(cluster):
    """weftd's metrics listen on 0.0.0.0: each node reaches its own and the other's,
    pods reach neither (their own node's addresses, the bridge address, or the other
    node's address, masqueraded on the way)."""
    cluster.set_network("weft", VXLAN)
    nodes = [cluster.add_node() for _ in range(2)]
    for node in nodes:
        node.start_agent(extra=["--metrics-addr", "0.0.0.0:9465"])
    for node in nodes:
        node.wait_ready()
        wait_for(lambda: guarded(node) and elements(node, "peers4"), 20, what=f"{node.name} guarded")
    n1, n2 = nodes
    assert elements(n1, "peers4") == [n2.ip] and elements(n2, "peers4") == [n1.ip]
    assert elements(n1, "ports") == ["tcp . 9465", "udp . 8472"]
    pod = n1.add_pod(name="curious", pod_namespace="default")
    gateway = pod.result["ips"][0]["gateway"]
    assert reaches(n1.ns, n1.ip, 9465) and reaches(n2.ns, n1.ip, 9465), "the nodes lost their metrics"
    for address in (n1.ip, gateway, n2.ip):
        assert not reaches(pod.ns, address, 9465), f"a pod reached weftd at {address}:9465"
    wait_for(lambda: {r["dst"] for r in control_records(n1) if r["target"] == "weftd"} == {n1.ip, gateway, n2.ip},
             20, what="the weftd refusals journalled")
    assert all(r["srcPod"] == "default/curious" and r["port"] == 9465 for r in control_records(n1))
    # a pod on the other node reaches this node's pod-network address through the overlay
    remote = n2.add_pod(name="remote", pod_namespace="default")
    assert not reaches(remote.ns, gateway, 9465), "a remote pod reached weftd through the overlay"
    server = pod.serve_tcp(7202, 1)
    assert remote.tcp(pod.ip, 7202) == remote.ip, "pod -> pod across nodes broke"
    server.wait(timeout=10)


def test_deleted_table_rule_and_element_come_back_counted(cluster):
    node, = cluster.start_nodes(1, VXLAN)
    wait_for(lambda: guarded(node), 20, what="control-plane table")
    pod = node.add_pod()
    # SIGTERM leaves the guard in place, and a restarted agent keeps it as it is
    before = handles(table(node))
    node.stop_agent()
    assert not reaches(pod.ns, ETCD_IP), "with weftd stopped a pod reached etcd"
    restarted = time.time()
    node.start_agent()
    wait_for(lambda: (guard(node).get("lastCheck") or 0) > restarted and node.status()["ready"], 20,
             what="the restarted agent checked the table")
    assert handles(table(node)) == before, "a restarted agent rebuilt a table that was right"
    assert guard(node)["driftRepaired"] == 0
    node.ns.run(["nft", "delete", "table", "inet", TABLE])
    wait_for(lambda: table(node) is not None and elements(node, "etcd4") == [f"{ETCD_IP} . {ETCD_PORT}"], 20,
             what="deleted table recreated")
    wait_for(lambda: guard(node)["driftRepaired"] == 1, 20, what="drift counted once")
    rule = next(i["rule"]["handle"] for i in table(node) if "rule" in i and i["rule"]["chain"] == "forward"
                and i["rule"].get("comment") == "pods to etcd IPv4")
    node.ns.run(["nft", "delete", "rule", "inet", TABLE, "forward", "handle", str(rule)])
    wait_for(lambda: any(i["rule"].get("comment") == "pods to etcd IPv4" for i in table(node)
                         if "rule" in i and i["rule"]["chain"] == "forward"), 20, what="deleted rule put back")
    wait_for(lambda: guard(node)["driftRepaired"] == 2, 20, what="second drift counted")
    node.ns.run(["nft", "delete", "element", "inet", TABLE, "etcd4", f"{{ {ETCD_IP} . {ETCD_PORT} }}"])
    wait_for(lambda: elements(node, "etcd4") == [f"{ETCD_IP} . {ETCD_PORT}"], 20, what="deleted element put back")
    wait_for(lambda: guard(node)["driftRepaired"] == 3, 20, what="third drift counted")
    assert metric(node, DRIFT) >= 3
    assert "reconcile repaired control-plane table weft_control_weft" in node.log()
    assert not reaches(pod.ns, ETCD_IP), "after the repairs a pod reached etcd"
    status = cluster.weftctl("status", "--run-dir", node.run_dir).stdout
    assert "3 repairs since start" in status, status

    # the table goes with the network
    cluster.etcd.etcdctl("del", "/weft/networks/weft/config", check=True)
    wait_for(lambda: table(node) is None, 20, what="table removed after the network config left etcd")
    wait_for(lambda: guard(node)["state"] == "absent", 20, what="status says absent")
    assert "control-plane table weft_control_weft removed: the network config left etcd" in node.log()
