"""Pods on different nodes reach each other over the overlay (real etcd, real agents)."""

import itertools
import json
import os
import re
from datetime import datetime, timedelta, timezone

from lab.cluster import ETCD_IP, Cluster, serve_tcp, wait_for

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}


def start(cluster, count, config=VXLAN, network="weft"):
    return cluster.start_nodes(count, config, network)


def assert_full_mesh(pods, tcp=True):
    failures = []
    for port, (src, dst) in enumerate(itertools.permutations(pods, 2), start=7000):
        for address in dst.ips:
            if not src.ping(address):
                failures.append(f"ping {src.node.name}/{src.ip} -> {dst.node.name}/{address}")
        if tcp:
            server = dst.serve_tcp(port, 1)
            if not src.tcp(dst.ip, port):
                failures.append(f"tcp {src.node.name}/{src.ip} -> {dst.node.name}/{dst.ip}:{port}")
            server.kill()
            server.wait()
    assert not failures, failures


def test_two_nodes_vxlan_kernel_state_and_operability(cluster):
    nodes = start(cluster, 2)
    pods = [node.add_pod() for node in nodes]
    assert_full_mesh(pods)
    one, two = nodes
    link = one.ns.ip_json("-d", "link", "show", "weft.1")[0]
    assert link["linkinfo"]["info_data"]["id"] == 1 and link["mtu"] == 1450
    assert link["linkinfo"]["info_data"]["learning"] is False
    lease_two = two.status()["lease"]
    routes = one.ns.ip_json("route", "show", "proto", "119")
    assert [(r["dst"], r["gateway"], r["dev"]) for r in routes] == \
        [(lease_two["subnet"], lease_two["subnet"].split("/")[0], "weft.1")]
    fdb = one.ns.run(["bridge", "-j", "fdb", "show", "dev", "weft.1"]).stdout
    assert lease_two["vtepMAC"] in fdb and two.ip in fdb
    # subnet file contract
    env = open(one.subnet_file()).read()
    subnet = one.status()["lease"]["subnet"]
    assert "WEFT_NETWORK=10.244.0.0/16\n" in env and "WEFT_MTU=1450\n" in env
    assert f"WEFT_SUBNET={subnet.replace('.0/', '.1/')}\n" in env and "WEFT_IPMASQ=true\n" in env
    # operability: leases, status, metrics, health
    leases = json.loads(cluster.weftctl("leases", "weft", "--json", "--ttl").stdout)
    assert sorted(row["node"] for row in leases) == ["node1", "node2"]
    assert all(row["ttl"] > 0 for row in leases)
    assert all("ttl" not in row for row in json.loads(cluster.weftctl("leases", "weft", "--json").stdout)), \
        "TTLs were read without --ttl"
    status = one.ns.run([f"{cluster.installed}/bin/weftctl", "status", "--run-dir", one.run_dir])
    assert "network weft on node node1: ready" in status.stdout and "1 programmed" in status.stdout
    code, metrics = one.http("/metrics")
    assert code == 200
    assert 'weft_leases_held{network="weft"} 1.0' in metrics
    assert 'weft_peers_programmed{network="weft"} 1.0' in metrics
    assert "weft_reconcile_duration_seconds_count" in metrics
    assert one.http("/healthz")[0] == 200 and one.http("/readyz")[0] == 200 and one.http("/readyz")[1].strip() == "ready"
    # structured logs name network, node and lease
    started = [json.loads(line) for line in one.log().splitlines() if '"lease acquired"' in line]
    assert started and started[0]["network"] == "weft" and started[0]["node"] == "node1"
    assert started[0]["lease"] == subnet.replace(".0/", ".0-")


def test_five_nodes_full_mesh_icmp_and_tcp(cluster):
    nodes = start(cluster, 5)
    pods = [node.add_pod() for node in nodes]
    assert_full_mesh(pods)
    subnets = {node.status()["lease"]["subnet"] for node in nodes}
    assert len(subnets) == 5


def test_host_gw_backend(cluster):
    nodes = start(cluster, 3, {"Network": "10.245.0.0/16", "Backend": {"Type": "host-gw"}})
    pods = [node.add_pod() for node in nodes]
    assert_full_mesh(pods, tcp=False)
    routes = nodes[0].ns.ip_json("route", "show", "proto", "119")
    assert sorted(r["gateway"] for r in routes) == [nodes[1].ip, nodes[2].ip]
    assert all(r["dev"] == "eth0" for r in routes)
    assert not nodes[0].ns.ip_json("link", "show", "type", "vxlan")
    assert "WEFT_MTU=1500\n" in open(nodes[0].subnet_file()).read()


def test_dual_stack(cluster):
    config = {"Network": "10.246.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:246::/48",
              "Backend": {"Type": "vxlan", "VNI": 1}}
    nodes = start(cluster, 2, config)
    pods = [node.add_pod() for node in nodes]
    assert all(len(pod.ips) == 2 and ":" in pod.ips[1] for pod in pods)
    assert_full_mesh(pods, tcp=False)
    v6_routes = nodes[0].ns.ip_json("-6", "route", "show", "proto", "119")
    assert [r["dev"] for r in v6_routes] == ["weft.1"]


def test_secondary_network_beside_primary(cluster):
    cluster.set_network("weft", VXLAN)
    cluster.set_network("weft2", {"Network": "10.250.0.0/16", "Backend": {"Type": "vxlan", "VNI": 2}})
    nodes = [cluster.add_node() for _ in range(2)]
    for node in nodes:
        node.start_agent(networks=("weft", "weft2"))
    for node in nodes:
        node.wait_ready("weft")
        node.wait_ready("weft2")
        wait_for(lambda: len(node.status("weft2")["peers"]) == 1, 20, what="weft2 peers")
    pods = []
    for node in nodes:
        primary = node.add_pod("weft")
        secondary = node.add_pod("weft2", ifname="net1", ns=primary.ns,
                                 conf=node.netconf("weft2", bridge="cbr1", isDefaultGateway=False))
        pods.append((primary, secondary))
    (a, a2), (b, b2) = pods
    assert a.ping(b.ip) and a2.ping(b2.ip)
    assert a2.ip.startswith("10.250.") and a.ip.startswith("10.244.")
    defaults = [r for r in a.ns.ip_json("route", "show", "default")]
    assert [(r["dev"]) for r in defaults] == ["eth0"]
    nets = {r["dst"]: r["dev"] for r in a.ns.ip_json("route", "show")}
    assert nets["10.250.0.0/16"] == "net1"
    node_links = {link["ifname"] for link in nodes[0].ns.ip_json("link", "show")}
    assert {"weft.1", "weft.2", "cbr0", "cbr1"} <= node_links
    assert open(nodes[0].subnet_file("weft2")).read().startswith("WEFT_NETWORK=10.250.0.0/16")


def test_weftctl_network_and_leases_against_etcd(cluster):
    cluster.set_network("weft", VXLAN)
    clash = cluster.weftctl("network", "set", "other", "--config",
                            json.dumps({"Network": "10.99.0.0/16", "Backend": {"VNI": 1}}), check=False)
    assert clash.returncode == 2 and "VNI 1 is already used by network weft" in clash.stderr
    overlap = cluster.weftctl("network", "set", "other", "--config",
                              json.dumps({"Network": "10.244.128.0/17", "Backend": {"VNI": 7}}), check=False)
    assert overlap.returncode == 2, overlap
    assert "Network 10.244.128.0/17 overlaps network weft's 10.244.0.0/16" in overlap.stderr, overlap.stderr
    bad = cluster.weftctl("network", "set", "other", "--config", '{"Network": "10.99.0.0/33"}', check=False)
    assert bad.returncode == 2 and "10.99.0.0/33" in bad.stderr
    short = cluster.weftctl("network", "set", "other", "--config",
                            '{"Network": "10.99.0.0/16", "SubnetLen": 12}', check=False)
    assert short.returncode == 2 and "SubnetLen 12" in short.stderr
    assert cluster.etcd.etcdctl("get", "/weft/networks/other/config").stdout == "", "a refused config was stored"
    got = json.loads(cluster.weftctl("network", "get", "weft").stdout)
    assert got["Network"] == "10.244.0.0/16"
    missing = cluster.weftctl("network", "get", "other", check=False)
    assert missing.returncode == 1 and missing.stdout == "", missing
    assert "network other has no config at /weft/networks/other/config" in missing.stderr, missing.stderr

    # leases as text: a live lease with its etcd lease (--ttl: its TTL), and a reservation
    # (a key with no etcd lease)
    granted = cluster.etcd.etcdctl("lease", "grant", "600", check=True).stdout
    lease_hex = re.search(r"lease ([0-9a-f]+) granted", granted).group(1)
    lease = {"PublicIP": "192.168.100.7", "NodeName": "nodeseven", "BackendType": "vxlan",
             "BackendData": {"VNI": 1, "VtepMAC": "02:00:00:00:07:07"}}
    cluster.etcd.etcdctl("put", f"--lease={lease_hex}", "/weft/networks/weft/subnets/10.244.7.0-24",
                         json.dumps(lease), check=True)
    cluster.etcd.etcdctl("put", "/weft/networks/weft/subnets/10.244.8.0-24",
                         json.dumps({**lease, "NodeName": "reserved", "PublicIP": "192.168.100.8"}), check=True)
    # endpoints from $WEFT_ETCD_ENDPOINTS (no --etcd-endpoints flag)
    weftctl = [f"{cluster.installed}/bin/weftctl", "leases", "weft"]
    for extra, last in (([], "LEASE"), (["--ttl"], "TTL")):
        text = cluster.underlay.run(weftctl + extra,
                                    env={**os.environ, "WEFT_ETCD_ENDPOINTS": cluster.etcd.endpoint}).stdout
        header, *rows = text.splitlines()
        assert header.split() == ["NETWORK", "SUBNET", "NODE", "PUBLIC", "IP", "VTEP", "MAC", last], header
        assert len(rows) == 2, text
        live, reserved = (row.split() for row in rows)
        assert live[:5] == ["weft", "10.244.7.0/24", "nodeseven", "192.168.100.7", "02:00:00:00:07:07"], rows[0]
        if extra:
            assert re.fullmatch(r"\d+s", live[5]) and 0 < int(live[5][:-1]) <= 600, rows[0]
        else:
            assert int(live[5], 16) == int(lease_hex, 16), rows[0]
        assert reserved == ["weft", "10.244.8.0/24", "reserved", "192.168.100.8", "02:00:00:00:07:07",
                            "reservation"], rows[1]
    unset = cluster.underlay.run(weftctl, check=False, env={**os.environ, "WEFT_ETCD_ENDPOINTS": "http://127.0.0.1:9"})
    assert unset.returncode == 3 and "http://127.0.0.1:9" in unset.stderr, unset


def test_etcd_prefix_log_level_and_history_retention(cluster):
    """weftd with --etcd-prefix /other, --log-level warning, --history-retention 1 (hour)."""
    config = json.dumps(VXLAN)
    cluster.weftctl("network", "set", "weft", "--config", config, "--etcd-prefix", "/other")
    node = cluster.add_node()
    journal = os.path.join(node.ipam_dir, "weft", "history.jsonl")
    os.makedirs(os.path.dirname(journal))
    now = datetime.now(timezone.utc)
    with open(journal, "w") as handle:
        for cid, at in (("three-hours-ago", now - timedelta(hours=3)), ("just-now", now)):
            handle.write(json.dumps({"ts": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "event": "allocate",
                                     "ip": "10.244.9.9", "network": "weft", "containerID": cid,
                                     "ifname": "eth0", "podNamespace": "default", "podName": cid}) + "\n")
    node.start_agent(extra=["--etcd-prefix", "/other", "--log-level", "warning", "--history-retention", "1"])
    node.wait_ready()

    def published():
        return cluster.etcd.etcdctl("get", "--prefix", "/other/networks/weft/history/node1/",
                                    "--print-value-only", check=True).stdout

    wait_for(lambda: "just-now" in published() and "three-hours-ago" not in published(), 30,
             what="the recent history record in etcd and the one older than --history-retention pruned")
    (row,) = json.loads(cluster.weftctl("leases", "weft", "--etcd-prefix", "/other", "--json").stdout)
    assert row["node"] == "node1" and row["subnet"] == node.status()["lease"]["subnet"]
    assert cluster.etcd.etcdctl("get", "--prefix", "/weft/", "--keys-only", check=True).stdout.strip() == "", \
        "weftd wrote outside its --etcd-prefix"
    lines = [json.loads(line) for line in node.log().splitlines() if line.strip()]
    assert all(line["level"] in ("warning", "error") for line in lines), lines
    assert not [line for line in lines if line["msg"] == "lease acquired"]  # an info line


def test_malformed_config_is_reported_and_other_networks_stay_up(cluster):
    cluster.set_network("weft", VXLAN)
    cluster.etcd.etcdctl("put", "/weft/networks/broken/config", "{not json", check=True)
    node = cluster.add_node()
    node.start_agent(networks=("broken", "weft"))
    node.wait_ready("weft")
    problem = wait_for(lambda: (node.status("broken") or {}).get("problem"), 20, what="broken reported")
    assert "network broken" in problem and "not valid JSON" in problem
    code, body = node.http("/readyz")
    assert code == 503 and "broken" in body
    assert node.agent.poll() is None
    pod = node.add_pod("weft")
    assert pod.ip.startswith("10.244.")


def test_ip_masq_towards_outside_but_not_between_pods(cluster):
    nodes = start(cluster, 2)
    a, b = (node.add_pod() for node in nodes)
    # the underlay (etcd's address) is outside the cluster network: masqueraded to node1
    server = serve_tcp(cluster.underlay, ETCD_IP, 7100, 1)
    assert a.tcp(ETCD_IP, 7100) == nodes[0].ip
    server.wait(timeout=10)
    # pod to pod keeps the pod's address
    server = b.serve_tcp(7101, 1)
    assert a.tcp(b.ip, 7101) == a.ip
    server.wait(timeout=10)
    table = nodes[0].ns.run(["nft", "list", "table", "inet", "weft_weft"]).stdout
    subnet = nodes[0].status()["lease"]["subnet"]  # node-wide: the node's subnet, not each pod
    assert "masquerade" in table and "10.244.0.0/16" in table and subnet in table and a.ip not in table


def test_etcd_with_tls_and_auth(tmp_path, installed):
    cluster = Cluster(tmp_path / "tls", installed, etcd_tls=True, etcd_auth=True)
    try:
        nodes = start(cluster, 2)
        pods = [node.add_pod() for node in nodes]
        assert_full_mesh(pods, tcp=False)
    finally:
        cluster.cleanup()


def test_whois_cluster_wide(cluster):
    """Each agent publishes its node's IP history; weftctl answers for any node and time."""
    nodes = start(cluster, 2)
    pod = nodes[1].add_pod(name="web-1")
    assert nodes[1].delete_pod(pod).code == 0
    text = wait_for(lambda: _whois_during_lifetime(cluster, pod), 30, interval=0.5,
                    what="history published to etcd")
    assert f"{pod.ip} held by default/web-1" in text and "node node2" in text
    now = cluster.weftctl("whois", pod.ip, "--cluster", check=False)
    assert now.returncode == 1 and "no holder" in now.stdout


def _whois_during_lifetime(cluster, pod):
    """whois --cluster at the moment of the pod's allocation, once published."""
    values = cluster.etcd.etcdctl("get", "--prefix", "/weft/networks/weft/history/",
                                  "--print-value-only").stdout
    allocations = [json.loads(line) for line in values.splitlines()
                   if line.startswith("{") and f'"{pod.ip}"' in line and '"allocate"' in line]
    if not allocations:
        return None
    out = cluster.weftctl("whois", pod.ip, "--cluster", "--at", allocations[0]["ts"], check=False)
    return out.stdout if "held by" in out.stdout else None
