"""Cluster state that hostile or careless writes cannot corrupt (issue 13, items 1-3).

A 3-node cluster in namespaces (real etcd, a real weftd per node); leases and configs
are written by hand with etcdctl, as an attacker or a careless tool would.  What is
asserted is read back from each node's kernel (`ip -j`, `bridge -j`), from etcd, from the
status files, /metrics, /readyz and weftctl.  The tests of the module share one cluster
and run in file order; each leaves it as the next expects (the last one migrates it).
"""

import ipaddress
import json
import os
import re
import subprocess
import threading

import pytest

from cni_plugin.subnet.etcd_registry import EtcdRegistry
from cni_plugin.subnet.lease import Lease, NetworkConfig
from cni_plugin.subnet.lease_manager import LeaseManager
from cni_plugin.backends.vxlan import VxlanData
from lab.cluster import Cluster, wait_for

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
PREFIX = "/weft/networks/weft/subnets/"
PROTO = "119"
CONTROL_MAC = "02:00:00:00:00:c0"
CONTROL_IP = "192.168.100.250"


@pytest.fixture(scope="module")
def state(tmp_path_factory, installed):
    cluster = Cluster(tmp_path_factory.mktemp("state"), installed)
    try:
        nodes = cluster.start_nodes(3, VXLAN, mesh_timeout=30)
        yield cluster, nodes
    finally:
        cluster.cleanup()


# -- helpers -------------------------------------------------------------------------

def lease_value(node="hostile", public_ip="192.168.100.201", mac="02:00:00:00:00:a1", vni=1) -> str:
    return json.dumps({"PublicIP": public_ip, "NodeName": node, "BackendType": "vxlan",
                       "BackendData": {"VNI": vni, "VtepMAC": mac}})


def put(cluster, key: str, value: str):
    cluster.etcd.etcdctl("put", PREFIX + key, value, check=True)


def delete(cluster, key: str):
    cluster.etcd.etcdctl("del", PREFIX + key, check=True)


def leases(cluster) -> list:
    return json.loads(cluster.weftctl("leases", "weft", "--json").stdout)


def lease_of(cluster, node_name: str) -> dict:
    rows = [row for row in leases(cluster) if row.get("node") == node_name]
    assert len(rows) == 1, f"{node_name} should hold exactly one lease: {rows}"
    return rows[0]


def kernel(node, device="weft.1") -> dict:
    """The overlay entries on a node: proto-119 routes, permanent neighbours, FDB."""
    routes = node.ns.ip_json("route", "show", "proto", PROTO)
    neighbours = node.ns.ip_json("-4", "neigh", "show", "dev", device) if device_exists(node, device) else []
    out = node.ns.run(["bridge", "-j", "fdb", "show", "dev", device], check=False).stdout \
        if device_exists(node, device) else ""
    fdb = json.loads(out) if out.strip() else []
    return {"routes": {r["dst"] for r in routes},
            "neigh_macs": {(n.get("lladdr") or "").lower() for n in neighbours},
            "fdb_macs": {(e.get("mac") or "").lower() for e in fdb if e.get("dst")}}


def device_exists(node, device) -> bool:
    return node.ns.run(["ip", "link", "show", device], check=False).returncode == 0


def refused(node) -> dict:
    return {item["key"]: item for item in (node.status() or {}).get("refused") or []}


def free_subnets(cluster, count: int) -> list:
    taken = {ipaddress.ip_network(row["subnet"]) for row in leases(cluster)}
    out = []
    for third in range(250, 1, -1):
        subnet = ipaddress.ip_network(f"10.244.{third}.0/24")
        if not any(subnet.overlaps(t) for t in taken):
            out.append(subnet)
        if len(out) == count:
            return out
    raise AssertionError("no free subnets left for the test")


def key_of(subnet) -> str:
    net = ipaddress.ip_network(subnet)
    return f"{net.network_address}-{net.prefixlen}"


def log_count(node, words: str) -> int:
    return sum(1 for line in node.log().splitlines() if words in line)


def node_id(node) -> str:
    with open(os.path.join(node.state_dir, "node-id")) as handle:
        return handle.read().strip()


def control_programmed(nodes, subnet) -> bool:
    """The valid control lease is on every node: the watch path has processed all earlier writes."""
    return all(str(subnet) in (k := kernel(n))["routes"] and CONTROL_MAC in k["neigh_macs"]
               and CONTROL_MAC in k["fdb_macs"] for n in nodes)


# -- 1. hostile leases ---------------------------------------------------------------------

def test_hostile_leases_are_refused_on_every_node(state):
    cluster, nodes = state
    owner = nodes[0]
    own = ipaddress.ip_network(lease_of(cluster, "node1")["subnet"])
    owner.add_pod()  # the owner's bridge carries its subnet: its pods are reached there
    spare = free_subnets(cluster, 6)
    inside = ipaddress.ip_network(f"{own.network_address + 128}/25")
    hostile = {  # key -> (value, reason)
        key_of(inside): (lease_value(mac="02:00:00:00:00:a1"), "subnet-length"),
        "10.244.0.0-16": (lease_value(mac="02:00:00:00:00:a2", public_ip="192.168.100.202"), "subnet-length"),
        key_of(spare[0]): (lease_value(mac="ff:ff:ff:ff:ff:ff"), "backend-data"),
        key_of(spare[1]): (lease_value(mac="01:00:5e:00:00:07"), "backend-data"),
        key_of(spare[2]): (lease_value(mac="02:00:00:00:00:a5", public_ip="127.0.0.1"), "public-ip"),
        key_of(spare[3]): (lease_value(mac="02:00:00:00:00:a6", public_ip="0.0.0.0"), "public-ip"),
        "10.99.1.0-24": (lease_value(mac="02:00:00:00:00:a7"), "outside-network"),
        f"{spare[4].network_address}-26": (lease_value(mac="02:00:00:00:00:a8"), "subnet-length"),
    }
    hostile_macs = {json.loads(v)["BackendData"]["VtepMAC"] for v, _ in hostile.values()}
    hostile_subnets = {str(ipaddress.ip_network(k.replace("-", "/"))) for k in hostile}
    for key, (value, _) in hostile.items():
        put(cluster, key, value)
    control = spare[5]
    put(cluster, key_of(control), lease_value(node="control", public_ip=CONTROL_IP, mac=CONTROL_MAC))
    wait_for(lambda: control_programmed(nodes, control), 30,
             what="the valid control lease written after the hostile ones programmed on every node")
    for node in nodes:
        wait_for(lambda: set(hostile) <= set(refused(node)), 30,
                 what=f"{node.name}'s status listing all {len(hostile)} hostile leases as refused")

    for node in nodes:
        k = kernel(node)
        assert not (k["routes"] & hostile_subnets), f"{node.name} routes hostile subnets: {k['routes']}"
        assert not (k["neigh_macs"] & hostile_macs), f"{node.name} has hostile neighbours: {k['neigh_macs']}"
        assert not (k["fdb_macs"] & hostile_macs), f"{node.name} has hostile FDB entries: {k['fdb_macs']}"
        reasons = {key: item["reason"] for key, item in refused(node).items()}
        assert {key: reasons[key] for key in hostile} == {key: r for key, (_, r) in hostile.items()}
        assert node.status()["ready"], f"{node.name}: refusing leases must not make the node unready"
        code, body = node.http("/metrics")
        assert code == 200
        assert re.search(r'^weft_lease_refusals\{network="weft",reason="public-ip"\} 2\.0$', body, re.M), body
        assert re.search(r'^weft_lease_refusals\{network="weft",reason="subnet-length"\} 3\.0$', body, re.M)
    # the owner of the /24 keeps its own addresses off the overlay
    owner_routes = owner.ns.ip_json("route", "show", "proto", PROTO)
    assert not [r for r in owner_routes if ipaddress.ip_network(r["dst"]).overlaps(own)], owner_routes
    via = owner.ns.ip_json("route", "get", str(own.network_address + 200))
    assert via[0].get("dev") == "cbr0", f"node1 routes its own {own.network_address + 200} elsewhere: {via}"
    # weftctl status shows them
    out = subprocess.run([os.path.join(cluster.installed, "bin", "weftctl"), "status", "--run-dir",
                          owner.run_dir], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert f"REFUSED    {len(hostile)} lease(s)" in out.stdout, out.stdout
    for key in hostile:
        assert key in out.stdout
    # logged once each, with the reason, though every node keeps reconciling
    seen = owner.status()["lastReconcile"]
    wait_for(lambda: owner.status()["lastReconcile"] > seen + cluster.reconcile_interval, 30,
             what="two more reconciles on node1")
    for key in hostile:
        assert log_count(owner, f"lease refused: lease {key}") == 1, key

    # the listing path (a restarted agent) refuses them just the same
    third = nodes[2]
    third.stop_agent()
    third.start_agent()
    third.wait_ready()
    wait_for(lambda: set(hostile) <= set(refused(third)) and len(third.status()["peers"]) == 3, 30,
             what="node3, restarted, listing the hostile leases as refused and 3 peers")
    k = kernel(third)
    assert not (k["routes"] & hostile_subnets) and not (k["neigh_macs"] & hostile_macs), k
    assert control_programmed([third], control)
    state_hostile[:] = [*hostile, key_of(control)]
    state_control[:] = [control]


state_hostile, state_control = [], []


def test_a_programmed_lease_that_turns_invalid_is_removed(state):
    cluster, nodes = state
    assert state_control, "runs after test_hostile_leases_are_refused_on_every_node"
    control = state_control[0]
    put(cluster, key_of(control), lease_value(node="control", public_ip=CONTROL_IP, mac="33:33:00:00:00:c0"))
    wait_for(lambda: all(str(control) not in kernel(n)["routes"] and CONTROL_MAC not in kernel(n)["neigh_macs"]
                         and CONTROL_MAC not in kernel(n)["fdb_macs"] for n in nodes), 30,
             what="the control lease's route, neighbour and FDB entry removed from every node")
    for node in nodes:
        wait_for(lambda: refused(node).get(key_of(control), {}).get("reason") == "backend-data", 30,
                 what=f"{node.name} listing the rewritten control lease as refused")
    for key in state_hostile:
        delete(cluster, key)
    for node in nodes:
        wait_for(lambda: not refused(node) and len(node.status()["peers"]) == 2, 30,
                 what=f"{node.name} back to no refusals and 2 peers once the hostile keys are gone")


# -- 3. node identity ------------------------------------------------------------------

def test_a_second_agent_under_a_live_node_name_exits_naming_both(state):
    cluster, nodes = state
    before = lease_of(cluster, "node1")
    assert before["nodeID"] == node_id(nodes[0])
    clone = cluster.add_node()  # its own namespace, state dir and public IP, but node1's name
    try:
        agent = clone.start_agent(extra=["--node-name", "node1"])
        wait_for(lambda: agent.poll() is not None, 60, what="the clone agent exiting")
        assert agent.returncode == 3, clone.log()
        log = clone.log()
        assert node_id(nodes[0]) in log and node_id(clone) in log, log
        assert "192.168.100.1" in log and clone.ip in log, log
        fatal = clone.status()["fatal"]
        assert node_id(nodes[0]) in fatal and node_id(clone) in fatal, fatal
        out = subprocess.run([os.path.join(cluster.installed, "bin", "weftctl"), "status", "--run-dir",
                              clone.run_dir], capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and "FATAL" in out.stdout and node_id(clone) in out.stdout, out.stdout
        after = lease_of(cluster, "node1")
        assert after == before, "the clone rewrote node1's lease"
        assert nodes[0].status()["ready"]
    finally:
        clone.agent = None
        cluster.nodes.remove(clone)
        clone.cleanup()
    # a restart of node1 itself (same state dir) adopts its lease as before
    nodes[0].stop_agent()
    nodes[0].start_agent()
    nodes[0].wait_ready()
    again = lease_of(cluster, "node1")
    assert (again["subnet"], again["leaseID"], again["nodeID"]) == (before["subnet"], before["leaseID"], before["nodeID"])


# -- 2. network config changes -----------------------------------------------------------

def test_network_set_refuses_changes_that_live_leases_contradict(state):
    cluster, nodes = state
    stored = cluster.weftctl("network", "get", "weft").stdout
    keys = sorted(row["subnet"] for row in leases(cluster))
    for change in ({"SubnetLen": 25}, {"Network": "10.245.0.0/16"}, {"Backend": {"Type": "vxlan", "VNI": 7}},
                   {"Backend": {"Type": "host-gw"}}):
        out = cluster.set_network_raw({**VXLAN, **change})
        assert out.returncode == 2, (change, out.stdout, out.stderr)
        assert "3 live lease(s)" in out.stderr and "--force-migrate" in out.stderr, out.stderr
        for subnet in keys:
            assert key_of(subnet) in out.stderr, (subnet, out.stderr)
        for name in ("node1", "node2", "node3"):
            assert f"node {name}" in out.stderr
        assert cluster.weftctl("network", "get", "weft").stdout == stored, "a refused config was stored"
    assert sorted(row["subnet"] for row in leases(cluster)) == keys


def test_mtu_and_masquerade_changes_are_applied_live(state):
    cluster, nodes = state
    pids = [node.agent.pid for node in nodes]
    out = cluster.set_network_raw({**VXLAN, "MTU": 1400, "IPMasq": False})
    assert out.returncode == 0 and "MTU: unset -> 1400; IPMasq: True -> False" in out.stdout, \
        out.stdout + out.stderr
    for node in nodes:
        wait_for(lambda: {"WEFT_MTU=1400", "WEFT_IPMASQ=false"} <= set(open(node.subnet_file()).read().split())
                 and "network config change applied live" in node.log(), 30,
                 what=f"{node.name}'s subnet file saying WEFT_MTU=1400 and WEFT_IPMASQ=false, and its log why")
        assert node.status()["ready"]
    assert [node.agent.pid for node in nodes] == pids and all(n.agent.poll() is None for n in nodes)
    pod = nodes[1].add_pod()
    assert pod.ns.ip_json("link", "show", "eth0")[0]["mtu"] == 1400


def test_unsafe_change_with_force_migrate_then_restart(state):
    cluster, nodes = state
    before = {row["node"]: row["subnet"] for row in leases(cluster)}
    new = {**VXLAN, "MTU": 1400, "IPMasq": False, "Backend": {"Type": "vxlan", "VNI": 5}}
    out = cluster.set_network_raw(new, "--force-migrate")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("deleted lease") == 3 and "Backend" in out.stdout, out.stdout
    for node in nodes:
        wait_for(lambda: not (node.status() or {}).get("ready") and "restart weftd" in
                 (node.status().get("problem") or ""), 30, what=f"{node.name} reporting the unsafe change")
        code, body = node.http("/readyz")
        assert code == 503 and "Backend" in body, (code, body)
    assert leases(cluster) == [], "an agent recreated its lease under the old config"
    assert all(device_exists(n, "weft.1") for n in nodes), "the datapath must stay until the restart"
    for node in nodes:
        node.stop_agent()
        node.start_agent()
    for node in nodes:
        node.wait_ready()
        wait_for(lambda: len(node.status()["peers"]) == 2, 30, what=f"{node.name} meshed on VNI 5")
    rows = leases(cluster)
    assert sorted(r["node"] for r in rows) == ["node1", "node2", "node3"]
    assert {r["node"]: r["subnet"] for r in rows} == before, "the state dir's subnet is kept on a VNI change"
    for node in nodes:
        others = {r["subnet"] for r in rows if r["node"] != node.name}
        assert others <= kernel(node, "weft.5")["routes"], (node.name, kernel(node, "weft.5"))


# -- acquisition races ---------------------------------------------------------------------

def test_two_agents_racing_for_the_last_free_space(cluster):
    """Hand-written keys of other lengths cover all but one /24 of the network; two agents
    start at once: one gets that /24, the other reports no free subnet, and neither takes
    space a hand-written key covers.  Freed space is taken on the loser's next attempt."""
    cluster.set_network("weft", {"Network": "10.246.0.0/21", "Backend": {"Type": "vxlan", "VNI": 1}})
    covers = {"10.246.2.0-23": ipaddress.ip_network("10.246.2.0/23"),
              "10.246.4.0-22": ipaddress.ip_network("10.246.4.0/22")}
    for key in covers:
        put(cluster, key, lease_value(node="reserved", mac="02:00:00:00:00:e1"))
    nodes = [cluster.add_node(), cluster.add_node()]
    for node in nodes:
        node.start_agent()
    wait_for(lambda: any((n.status() or {}).get("ready") for n in nodes)
             and any("no free /24 subnet" in ((n.status() or {}).get("problem") or "") for n in nodes), 30,
             what="one agent ready with the last /24 and the other reporting no free subnet")
    winner = next(n for n in nodes if n.status()["ready"])
    loser = next(n for n in nodes if n is not winner)
    rows = [r for r in leases(cluster) if r.get("node") in ("node1", "node2")]
    assert [r["subnet"] for r in rows] == ["10.246.1.0/24"] and rows[0]["node"] == winner.name, rows
    delete(cluster, "10.246.2.0-23")
    loser.wait_ready()
    mine = ipaddress.ip_network(lease_of(cluster, loser.name)["subnet"])
    assert mine.subnet_of(covers["10.246.2.0-23"]), mine
    assert not mine.overlaps(covers["10.246.4.0-22"])
    wait_for(lambda: len(winner.status()["peers"]) == 1 and len(loser.status()["peers"]) == 1, 30,
             what="the two agents meshed")
    assert set(refused(winner)) == {"10.246.4.0-22"}, refused(winner)


# -- acquisition races (real etcd, no agents) ------------------------------------------------

def _manager(etcd, tmp_path, name, config):
    registry = EtcdRegistry([etcd.endpoint])
    template = Lease(subnet=ipaddress.IPv4Network("0.0.0.0/32"), public_ip=ipaddress.IPv4Address("192.0.2.7"),
                     node_name=name, backend_data=VxlanData(1, "02:00:00:00:01:%02x" % (hash(name) % 250)),
                     node_id=name.encode().hex().ljust(32, "0")[:32])
    return registry, LeaseManager(registry, config, template, str(tmp_path / name))


def test_acquisition_never_takes_space_an_overlapping_key_holds(etcd, tmp_path):
    """A hand-written /22 lands between the listing and the create: the transaction fails
    and the agent picks a subnet outside it; pre-existing odd keys are avoided as space."""
    config = NetworkConfig.parse("race", json.dumps({"Network": "10.60.0.0/24", "SubnetLen": 27}))
    etcd.etcdctl("put", "/weft/networks/race/subnets/10.60.0.64-26", "odd", check=True)  # two /27s
    registry, manager = _manager(etcd, tmp_path, "a", config)
    created = []

    class Interleaved:
        def __getattr__(self, name):
            return getattr(registry, name)

        def create_lease(self, network, key, value, ttl, listed_at=0):
            if not created:  # the hostile write races the first attempt: a /25 covering the candidate
                cover = ipaddress.ip_network(key.replace("-", "/")).supernet(new_prefix=25)
                etcd.etcdctl("put", f"/weft/networks/race/subnets/{key_of(cover)}", "hostile", check=True)
            result = registry.create_lease(network, key, value, ttl, listed_at=listed_at)
            created.append((key, result))
            return result

    manager.registry = Interleaved()
    try:
        held = manager.acquire(60)
    finally:
        registry.close()
    assert created[0][1] is None, f"the create after the hostile write succeeded: {created}"
    rows = {row[0] for row in EtcdRegistry([etcd.endpoint]).list_leases("race")[0]}
    taken = [ipaddress.ip_network(k.replace("-", "/")) for k in rows if k != held.lease.key]
    assert not any(held.lease.subnet.overlaps(t) for t in taken), (held.lease.subnet, taken)


def test_racing_agents_get_disjoint_subnets(etcd, tmp_path):
    """Eight agents acquire at once while a writer keeps adding overlapping /27 keys: no
    created lease overlaps any key that existed before it (by create revision)."""
    config = NetworkConfig.parse("race", json.dumps({"Network": "10.61.0.0/24", "SubnetLen": 28}))
    managers = [_manager(etcd, tmp_path, f"n{i}", config) for i in range(8)]
    results, errors = {}, []
    stop = threading.Event()

    def hostile():
        for third in range(0, 256, 32):
            if stop.is_set():
                return
            etcd.etcdctl("put", f"/weft/networks/race/subnets/10.61.0.{third}-27", "hostile", check=False)

    def take(name, manager):
        try:
            results[name] = manager.acquire(60).lease.subnet
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=hostile)] + [threading.Thread(target=take, args=(m.template.node_name, m))
                                                     for _, m in managers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stop.set()
    for registry, _ in managers:
        registry.close()
    reader = EtcdRegistry([etcd.endpoint])
    try:
        rows = reader.list_leases("race")[0]
    finally:
        reader.close()
    held = {ipaddress.ip_network(subnet): None for subnet in results.values()}
    assert len(held) == len(results), f"two agents got one subnet: {results}"
    created = {ipaddress.ip_network(r.key.replace("-", "/")): r.create_revision for r in rows}
    for subnet in results.values():
        older = [s for s, rev in created.items() if rev < created[subnet] and s != subnet and s.overlaps(subnet)]
        assert not older, f"{subnet} was created over the older overlapping keys {older}"
    # every agent got a subnet unless the hostile keys really filled the space
    free_left = [s for s in ipaddress.ip_network("10.61.0.0/24").subnets(new_prefix=28)
                 if not any(s.overlaps(t) for t in created) and s != ipaddress.ip_network("10.61.0.0/28")]
    assert not errors or not free_left, (errors, free_left)
