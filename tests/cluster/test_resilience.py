"""weftd under failure: a node goes away, an agent restarts, etcd is down, the kernel
drifts, and a subnet is taken by another node (real etcd, real agents, real kernel).

Measured times are printed (run with -s); the only timing in assertions is the
generous bound of each wait.
"""

import ipaddress
import json
import os
import re
import signal
import subprocess
import time

from lab.cluster import wait_for
from lab.cni import invoke

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
DEVICE = "weft.1"
ROUTE_PROTO = "119"
INTRUDER = "intruder"
INTRUDER_IP = "192.168.100.99"
INTRUDER_MAC = "02:00:00:00:00:99"


# -- helpers ---------------------------------------------------------------------

def start(cluster, count, pods_per_node=1, extra=()):
    cluster.set_network("weft", VXLAN)
    nodes = [cluster.add_node() for _ in range(count)]
    for node in nodes:
        node.start_agent(extra=extra)
    for node in nodes:
        node.wait_ready()
    for node in nodes:
        wait_for(lambda: len(node.status()["peers"]) == count - 1, 20, what=f"{node.name} peers")
    pods = [node.add_pod() for node in nodes for _ in range(pods_per_node)]
    return nodes, pods


def leases(cluster) -> list:
    return json.loads(cluster.weftctl("leases", "weft", "--json", "--ttl").stdout)


def lease_of(cluster, node_name) -> dict:
    rows = [row for row in leases(cluster) if row.get("node") == node_name]
    assert len(rows) == 1, f"{node_name} should hold exactly one lease: {rows}"
    return rows[0]


def subnet_key(subnet: str) -> str:
    net = ipaddress.ip_network(subnet)
    return f"/weft/networks/weft/subnets/{net.network_address}-{net.prefixlen}"


def revoke(cluster, lease_id: int):
    cluster.etcd.etcdctl("lease", "revoke", format(lease_id, "x"), check=True)


def overlay_entries(node, subnet: str, mac: str, public_ip: str) -> dict:
    """Which of a remote lease's kernel entries are on `node`."""
    vtep = str(ipaddress.ip_network(subnet).network_address)
    routes = node.ns.ip_json("route", "show", "proto", ROUTE_PROTO)
    neighbours = node.ns.ip_json("-4", "neigh", "show", "dev", DEVICE)
    out = node.ns.run(["bridge", "-j", "fdb", "show", "dev", DEVICE]).stdout
    fdb = json.loads(out) if out.strip() else []
    return {
        "route": any(r.get("dst") == subnet and r.get("gateway") == vtep for r in routes),
        "neigh": any(n.get("dst") == vtep and (n.get("lladdr") or "").lower() == mac
                     and "PERMANENT" in n.get("state", []) for n in neighbours),
        "fdb": any((e.get("mac") or "").lower() == mac and e.get("dst") == public_ip for e in fdb),
    }


def metric(node, name: str, network="weft") -> float:
    code, body = node.http("/metrics")
    assert code == 200, f"{node.name} /metrics answered {code}"
    match = re.search(rf'^{re.escape(name)}{{network="{network}"}} (\S+)$', body, re.M)
    return float(match.group(1)) if match else 0.0


def sample(node, series: str) -> float:
    """The value of one exact series, e.g. 'weft_lease_events_total{kind="put",network="weft"}'."""
    code, body = node.http("/metrics")
    assert code == 200, f"{node.name} /metrics answered {code}"
    match = re.search(rf"^{re.escape(series)} (\S+)$", body, re.M)
    return float(match.group(1)) if match else 0.0


def status_cni(node) -> dict:
    """The plugin's STATUS (CNI 1.1.0) inside the node: {"code": exit, "error": json or None}."""
    cni = os.path.join(node.cluster.installed, "cni")
    out = invoke(f"{cni}/weft", "STATUS", node.netconf(cniVersion="1.1.0"), cni_path=cni, node=node.ns)
    return {"exit": out.code, "error": out.json if out.code else None}


def intruder_value() -> str:
    return json.dumps({"BackendData": {"VNI": 1, "VtepMAC": INTRUDER_MAC}, "BackendType": "vxlan",
                       "NodeName": INTRUDER, "PublicIP": INTRUDER_IP}, sort_keys=True)


def put_intruder(cluster, subnet: str) -> int:
    """Another node's lease on `subnet`, bound to a fresh 600 s etcd lease; its id."""
    out = cluster.etcd.etcdctl("lease", "grant", "600", check=True).stdout
    hex_id = re.search(r"lease ([0-9a-f]+) granted", out).group(1)
    cluster.etcd.etcdctl("put", f"--lease={hex_id}", subnet_key(subnet), intruder_value(), check=True)
    return int(hex_id, 16)


def vxlan_address(node):
    link = node.ns.ip_json("-4", "addr", "show", "dev", DEVICE)
    return [f"{a['local']}/{a['prefixlen']}" for a in link[0]["addr_info"]] if link else []


def pod_address(pod):
    link = pod.ns.ip_json("-4", "addr", "show", "dev", pod.ifname)
    return [a["local"] for a in link[0]["addr_info"]] if link else []


def keys_of(cluster, node_name) -> list:
    return [row["subnet"] for row in leases(cluster) if row.get("node") == node_name]


def conflict_reports(node) -> int:
    """How many times node's agent has logged the intruder's conflict (once per attempt)."""
    count = 0
    for line in node.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") == "error" and INTRUDER in entry.get("msg", ""):
            count += 1
    return count


def rx_packets(ns, ifname) -> int:
    return ns.ip_json("-s", "link", "show", "dev", ifname)[0]["stats64"]["rx"]["packets"]


# -- 1. node removal ---------------------------------------------------------------

def test_node_removal_cleans_peers(cluster):
    nodes, pods = start(cluster, 3)
    node1, node2, node3 = nodes
    gone = lease_of(cluster, "node3")
    subnet, mac = gone["subnet"], gone["vtepMAC"]
    others = [node1, node2]
    for node in others:
        assert overlay_entries(node, subnet, mac, node3.ip) == {"route": True, "neigh": True, "fdb": True}
    assert pods[0].ping(pods[2].ip)

    deletes = 'weft_lease_events_total{kind="delete",network="weft"}'
    programmed = 'weft_peer_program_seconds_count{network="weft"}'
    before = {node.name: (sample(node, deletes), sample(node, programmed)) for node in others}
    node3.stop_agent()
    started = time.monotonic()
    revoke(cluster, gone["leaseID"])
    converged = {}
    for node in others:
        wait_for(lambda: not any(overlay_entries(node, subnet, mac, node3.ip).values()), 20,
                 what=f"{node.name} drops node3's route, neighbour and FDB entry")
        converged[node.name] = time.monotonic() - started
        wait_for(lambda: all("node3" not in p for p in node.status()["peers"]), 10,
                 what=f"{node.name} status forgets node3")
        # the watch's delete event was counted, and its path to the kernel timed
        assert sample(node, deletes) == before[node.name][0] + 1, node.http("/metrics")[1]
        assert sample(node, programmed) >= before[node.name][1] + 1, node.http("/metrics")[1]
    print("\nnode removal: revoke -> kernel cleanup "
          + ", ".join(f"{name} {secs * 1000:.0f} ms" for name, secs in converged.items())
          + f" (all nodes {max(converged.values()) * 1000:.0f} ms)")
    assert "node3" not in [row.get("node") for row in leases(cluster)]
    # the survivors still talk to each other
    assert pods[0].ping(pods[1].ip) and pods[1].ping(pods[0].ip)


# -- 2. agent restart ----------------------------------------------------------------

def test_agent_restart_keeps_lease_and_datapath(cluster):
    nodes, pods = start(cluster, 2)
    node1, node2 = nodes
    on1, on2 = pods
    before = lease_of(cluster, "node1")
    status_before = node1.status()["lease"]
    assert status_before["leaseID"] == before["leaseID"] and status_before["vtepMAC"] == before["vtepMAC"]
    ifindex = node1.ns.ip_json("link", "show", DEVICE)[0]["ifindex"]
    mac_on_device = node1.ns.ip_json("link", "show", DEVICE)[0]["address"]
    assert mac_on_device == before["vtepMAC"]

    # a ping with no count: it runs until the agent is back, however long that takes
    ping = subprocess.Popen(["ip", "netns", "exec", on2.ns.name, "ping", "-n", "-i", "0.05", "-W", "1",
                             on1.ip], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        received_before = rx_packets(on1.ns, on1.ifname)
        wait_for(lambda: rx_packets(on1.ns, on1.ifname) >= received_before + 5, 20,
                 what="the ping's first packets reaching the pod on node1")
        stopped = time.monotonic()
        node1.stop_agent()
        down = time.monotonic() - stopped
        restarted_at = time.time()
        node1.start_agent()
        wait_for(lambda: (node1.status() or {}).get("ready")
                 and (node1.status().get("lastReconcile") or 0) > restarted_at, 30,
                 what="node1 ready after its restart")
        ready_after = time.monotonic() - stopped
        # and a few packets more after the restart, then ping's summary (SIGINT)
        received_back = rx_packets(on1.ns, on1.ifname)
        wait_for(lambda: rx_packets(on1.ns, on1.ifname) >= received_back + 5, 20,
                 what="pings reaching the pod on node1 after its agent's restart")
        assert ping.poll() is None, f"ping ended during the restart: {ping.communicate()[0]}"
        ping.send_signal(signal.SIGINT)
        output, _ = ping.communicate(timeout=20)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait(timeout=10)
    print(f"\nagent restart: stop took {down * 1000:.0f} ms, ready again {ready_after * 1000:.0f} ms "
          f"after SIGTERM; ping: {output.strip().splitlines()[-2] if output.strip() else output!r}")
    match = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert match, output
    sent, received = int(match.group(1)), int(match.group(2))
    # the SIGINT may land while the last request is in flight; any other gap is a lost packet
    answered = sorted(int(seq) for seq in re.findall(r"icmp_seq=(\d+)", output))
    assert answered == list(range(1, len(answered) + 1)), f"replies missing during the restart:\n{output}"
    assert received == len(answered) >= sent - 1, f"lost {sent - received} of {sent} packets:\n{output}"

    after = lease_of(cluster, "node1")
    status_after = node1.status()["lease"]
    assert after["subnet"] == before["subnet"] == status_after["subnet"]
    assert after["leaseID"] == before["leaseID"] == status_after["leaseID"], "lease recreated, not reused"
    assert after["vtepMAC"] == before["vtepMAC"] == status_after["vtepMAC"]
    link = node1.ns.ip_json("link", "show", DEVICE)[0]
    assert link["ifindex"] == ifindex, "VXLAN device recreated"
    assert link["address"] == before["vtepMAC"]
    assert "recreated" not in node1.log()
    assert on1.ping(on2.ip) and on2.ping(on1.ip)


# -- 3. etcd outage --------------------------------------------------------------------

def test_etcd_outage_keeps_datapath_and_recovers(cluster):
    ttl = ["--lease-ttl", "30"]
    nodes, pods = start(cluster, 2, extra=ttl)
    node1, node2 = nodes
    old1, old2 = pods
    renewals = {node.name: metric(node, "weft_lease_renewals_total") for node in nodes}
    etcd_errors = {node.name: metric(node, "weft_etcd_errors_total") for node in nodes}
    for node in nodes:
        assert metric(node, "weft_network_ready") == 1
    outage = 30.0

    cluster.etcd.stop()
    down_at = time.monotonic()
    # every agent notices and says so (status and /readyz)
    for node in nodes:
        status = wait_for(lambda: (s := node.status()) and not s["ready"] and s, 15,
                          what=f"{node.name} reports the etcd outage")
        assert "etcd" in (status["problem"] or ""), status
        code, body = node.http("/readyz")
        assert code == 503 and "etcd" in body, (code, body)
        assert metric(node, "weft_network_ready") == 0
        assert metric(node, "weft_etcd_errors_total") > etcd_errors[node.name]
    noticed = time.monotonic() - down_at
    # a new pod on every node while etcd is down: the plugin only needs the subnet file
    new1, new2 = node1.add_pod(), node2.add_pod()
    assert new1.ping(old2.ip) and new2.ping(old1.ip) and new1.ping(new2.ip)
    rounds = 0
    while time.monotonic() - down_at < outage:
        assert old1.ping(old2.ip) and old2.ping(old1.ip), f"pods stopped talking {time.monotonic() - down_at:.1f}s into the outage"
        rounds += 1
        time.sleep(min(4.0, max(0.0, outage - (time.monotonic() - down_at))))
    for node in nodes:
        assert not node.status()["ready"]
        assert node.agent.poll() is None, f"{node.name}'s agent exited during the outage"
    during = {node.name: metric(node, "weft_lease_renewals_total") for node in nodes}

    cluster.etcd.start()
    back_at = time.monotonic()
    for node in nodes:
        wait_for(lambda: (node.status() or {}).get("ready"), 30, what=f"{node.name} ready after etcd returned")
        assert node.http("/readyz")[0] == 200
        wait_for(lambda: metric(node, "weft_network_ready") == 1, 30,
                 what=f"{node.name}'s weft_network_ready back to 1")
    reconnected = time.monotonic() - back_at
    for node in nodes:
        wait_for(lambda: metric(node, "weft_lease_renewals_total") > during[node.name], 20,
                 what=f"{node.name} renews its lease after the outage")
    for node in nodes:
        row = lease_of(cluster, node.name)
        assert row["ttl"] > 0 and row["leaseID"] == node.status()["lease"]["leaseID"], row
    # a node joining after the outage is programmed on the old nodes
    node3 = cluster.add_node()
    node3.start_agent(extra=ttl)
    joined_at = time.monotonic()
    node3.wait_ready()
    lease3 = lease_of(cluster, "node3")
    for node in nodes:
        wait_for(lambda: all(overlay_entries(node, lease3["subnet"], lease3["vtepMAC"], node3.ip).values()),
                 20, what=f"{node.name} programs node3")
    joined = time.monotonic() - joined_at
    pod3 = node3.add_pod()
    assert pod3.ping(old1.ip) and pod3.ping(new2.ip) and old2.ping(pod3.ip)
    print(f"\netcd outage {outage:.0f}s: agents reported it after {noticed:.1f}s, {rounds} ping rounds ok, "
          f"ready again {reconnected:.1f}s after etcd returned; renewals "
          + ", ".join(f"{n} {renewals[n]:.0f}->{during[n]:.0f}->{metric(x, 'weft_lease_renewals_total'):.0f}"
                      for n, x in ((node.name, node) for node in nodes))
          + f"; node3 programmed everywhere {joined:.1f}s after its start")


# -- 4. kernel drift ----------------------------------------------------------------------

def test_deleted_entries_are_restored(cluster):
    nodes, pods = start(cluster, 2)
    node1, node2 = nodes
    peer = lease_of(cluster, "node2")
    subnet, mac = peer["subnet"], peer["vtepMAC"]
    vtep = str(ipaddress.ip_network(subnet).network_address)
    assert overlay_entries(node1, subnet, mac, node2.ip) == {"route": True, "neigh": True, "fdb": True}
    drift_metric = metric(node1, "weft_drift_repaired_total")
    drift_status = node1.status()["driftRepaired"]

    node1.ns.run(["ip", "route", "del", subnet, "proto", ROUTE_PROTO])
    node1.ns.run(["ip", "neigh", "del", vtep, "dev", DEVICE])
    node1.ns.run(["bridge", "fdb", "del", mac, "dev", DEVICE, "dst", node2.ip])
    deleted_at = time.monotonic()
    assert overlay_entries(node1, subnet, mac, node2.ip) == {"route": False, "neigh": False, "fdb": False}
    interval = cluster.reconcile_interval
    wait_for(lambda: all(overlay_entries(node1, subnet, mac, node2.ip).values()), 30,
             what="node1 restores the deleted route, neighbour and FDB entry")
    restored = time.monotonic() - deleted_at
    wait_for(lambda: metric(node1, "weft_drift_repaired_total") >= drift_metric + 3, 30,
             what="weft_drift_repaired_total counts the repairs")
    wait_for(lambda: node1.status()["driftRepaired"] >= drift_status + 3, 30,
             what="status driftRepaired counts the repairs")
    print(f"\ndrift: 3 deleted entries restored {restored * 1000:.0f} ms later "
          f"(interval {interval}s); drift metric {drift_metric:.0f}->"
          f"{metric(node1, 'weft_drift_repaired_total'):.0f}")
    assert "repaired" in node1.log()
    assert pods[0].ping(pods[1].ip) and pods[1].ping(pods[0].ip)


# -- 5. subnet taken while the node was away ---------------------------------------------

def test_subnet_taken_while_away_is_a_conflict(cluster):
    nodes, pods = start(cluster, 2)
    node1, node2 = nodes
    pod1 = pods[0]
    own = lease_of(cluster, "node1")
    subnet = own["subnet"]
    gateway = f"{ipaddress.ip_network(subnet).network_address}/32"
    assert status_cni(node1)["exit"] == 0

    node1.stop_agent()
    revoke(cluster, own["leaseID"])
    intruder_id = put_intruder(cluster, subnet)
    restarted_at = time.monotonic()
    node1.start_agent()
    status = wait_for(lambda: (s := node1.status()) and s.get("conflict") and s, 20,
                      what="node1 reports the conflict")
    detected = time.monotonic() - restarted_at
    assert not status["ready"]
    assert "node1" in status["conflict"] and INTRUDER in status["conflict"], status["conflict"]
    code, body = node1.http("/readyz")
    assert code == 503 and INTRUDER in body and "node1" in body, (code, body)
    cni_status = status_cni(node1)
    assert cni_status["exit"] == 1 and cni_status["error"]["code"] == 51, cni_status
    assert INTRUDER in cni_status["error"]["msg"] + cni_status["error"].get("details", "")
    # it keeps asking (two more attempts), never takes another subnet, and the node's pods
    # keep their addresses
    reports = conflict_reports(node1)
    wait_for(lambda: conflict_reports(node1) >= reports + 2, 30,
             what="node1's agent retrying its lease twice more after the conflict")
    assert keys_of(cluster, "node1") == [], "node1 took another subnet"
    assert node1.status()["conflict"] and node1.agent.poll() is None
    assert pod_address(pod1) == [pod1.ip]
    assert gateway in vxlan_address(node1)
    assert (node1.status().get("lease") or {}).get("subnet") in (None, subnet)

    # the other node's lease goes: node1 takes its own subnet back and is ready again
    cluster.etcd.etcdctl("del", subnet_key(subnet), check=True)
    revoke(cluster, intruder_id)
    resolved_at = time.monotonic()
    wait_for(lambda: (s := node1.status()) and s["ready"] and not s["conflict"], 30,
             what="node1 ready after the intruder left")
    resolved = time.monotonic() - resolved_at
    after = lease_of(cluster, "node1")
    assert after["subnet"] == subnet and after["leaseID"] != own["leaseID"]
    assert node1.http("/readyz")[0] == 200
    assert status_cni(node1)["exit"] == 0
    assert pod_address(pod1) == [pod1.ip] and gateway in vxlan_address(node1)
    wait_for(lambda: all(overlay_entries(node2, subnet, after["vtepMAC"], node1.ip).values()), 10,
             what="node2 programs node1's recreated lease")
    assert pods[1].ping(pod1.ip)
    print(f"\nconflict while away: detected {detected:.1f}s after the agent's start, "
          f"resolved {resolved:.1f}s after the intruder left")


# -- 6. subnet taken while the agent runs ---------------------------------------------------

def test_subnet_taken_while_running_keeps_datapath(cluster):
    nodes, pods = start(cluster, 2)
    node1, node2 = nodes
    own = lease_of(cluster, "node1")
    subnet = own["subnet"]
    gateway = f"{ipaddress.ip_network(subnet).network_address}/32"
    with open(node1.subnet_file()) as handle:
        subnet_file = handle.read()

    taken_at = time.monotonic()
    revoke(cluster, own["leaseID"])
    intruder_id = put_intruder(cluster, subnet)
    status = wait_for(lambda: (s := node1.status()) and s.get("conflict") and s, 20,
                      what="node1 reports the conflict")
    detected = time.monotonic() - taken_at
    assert not status["ready"] and "node1" in status["conflict"] and INTRUDER in status["conflict"]
    code, body = node1.http("/readyz")
    assert code == 503 and INTRUDER in body, (code, body)
    assert status_cni(node1)["error"]["code"] == 51
    assert metric(node1, "weft_lease_conflict") == 1 and metric(node1, "weft_network_ready") == 0
    reports = conflict_reports(node1)
    wait_for(lambda: conflict_reports(node1) >= reports + 2, 30,
             what="node1's agent retrying its lease twice more after the conflict")
    assert node1.status()["conflict"], "the conflict cleared by itself"
    assert keys_of(cluster, "node1") == [], "node1 switched to another subnet"
    assert gateway in vxlan_address(node1), "node1 dropped its VXLAN address"
    with open(node1.subnet_file()) as handle:
        assert handle.read() == subnet_file
    assert node1.status()["lease"]["subnet"] == subnet
    assert pod_address(pods[0]) == [pods[0].ip]
    print(f"\nconflict while running: detected {detected * 1000:.0f} ms after the revoke")

    cluster.etcd.etcdctl("del", subnet_key(subnet), check=True)
    revoke(cluster, intruder_id)
    wait_for(lambda: (s := node1.status()) and s["ready"] and not s["conflict"], 30,
             what="node1 ready after the intruder left")
    assert lease_of(cluster, "node1")["subnet"] == subnet
    wait_for(lambda: metric(node1, "weft_lease_conflict") == 0 and metric(node1, "weft_network_ready") == 1, 30,
             what="node1's weft_lease_conflict back to 0 and weft_network_ready to 1")


# -- 7. own key deleted while its etcd lease lives ------------------------------------------

def test_deleted_key_with_live_lease_is_recreated(cluster):
    nodes, pods = start(cluster, 2)
    node1, node2 = nodes
    own = lease_of(cluster, "node1")
    cluster.etcd.etcdctl("del", subnet_key(own["subnet"]), check=True)
    deleted_at = time.monotonic()
    again = wait_for(lambda: [r for r in leases(cluster) if r.get("node") == "node1"], 10,
                     what="node1 recreates its deleted lease key")
    recreated = time.monotonic() - deleted_at
    assert [row["subnet"] for row in again] == [own["subnet"]]
    assert node1.status()["ready"] and node1.status()["lease"]["leaseID"] == again[0]["leaseID"]
    wait_for(lambda: all(overlay_entries(node2, own["subnet"], own["vtepMAC"], node1.ip).values()), 10,
             what="node2 programs node1 again")
    assert pods[1].ping(pods[0].ip)
    print(f"\nown key deleted (etcd lease alive): recreated {recreated * 1000:.0f} ms later")
