"""The wireguard backend on real node agents: encrypted pod traffic between namespaces.

Peers are read back with `wg` (wireguard-tools) inside each wireguard-go's own mount
and network namespace, routes with `ip -j`, and the underlay is captured with tcpdump
in the underlay namespace: an oracle independent of weft's own UAPI client.
"""

import base64
import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import time

import pytest

from lab.cluster import Cluster, wait_for
from lab.namespaces import file_tail, sh, suffix

from test_cross_node import assert_full_mesh, start

WIREGUARD = {"Network": "10.246.0.0/16", "Backend": {"Type": "wireguard"}}
VXLAN = {"Network": "10.246.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
DEV = "weft-wg.51820"
PORT = 51820


@pytest.fixture(autouse=True)
def tools():
    for tool, package in (("wireguard-go", "wireguard-go"), ("wg", "wireguard-tools"),
                          ("tcpdump", "tcpdump")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install --no-install-recommends {package} "
                        "(scripts/deps.sh installs it)")


def peers(node) -> dict:
    """{public key: (endpoint, sorted allowed ips)} from `wg show` (never `dump`: it
    prints the private key)."""
    endpoints = dict(line.split("\t") for line in node.wg("show", DEV, "endpoints").splitlines())
    allowed = {key: tuple(sorted(ips.split())) for key, ips in
               (line.split("\t") for line in node.wg("show", DEV, "allowed-ips").splitlines())}
    return {key: (endpoint, allowed.get(key, ())) for key, endpoint in endpoints.items()}


def public_key(node) -> str:
    return node.status()["wireguard"]["publicKey"]


def expected_peers(node, others) -> dict:
    return {public_key(o): (f"{o.ip}:{PORT}", (o.status()["lease"]["subnet"],)) for o in others}


def wait_peers(node, others, what):
    want = expected_peers(node, others)

    def matches():
        try:
            return peers(node) == want
        except (RuntimeError, KeyError):  # wireguard-go (re)starting: no socket or PID yet
            return False
    return wait_for(matches, 30, 0.2, what=f"{node.name}: {what} (want {want})")


def wait_tcp(src, dst, port, what):
    """Polls a TCP exchange pod->pod until it works (a handshake may take ~5 s)."""
    server = dst.serve_tcp(port, 1000)
    try:
        return wait_for(lambda: src.tcp(dst.ip, port), 40, 0.2, what=what)
    finally:
        server.kill()
        server.wait()


def test_three_nodes_peers_routes_mtu_and_traffic(cluster):
    nodes = start(cluster, 3, WIREGUARD)
    for node in nodes:
        wait_peers(node, [n for n in nodes if n is not node], "one peer per other node")
    pods = [node.add_pod() for node in nodes]
    for src, dst in ((0, 1), (1, 2), (2, 0)):  # handshakes first (polled), then the strict mesh
        wait_tcp(pods[src], pods[dst], 7100 + src, f"first tcp {src}->{dst}")
    assert_full_mesh(pods)
    one = nodes[0]
    link = one.ns.ip_json("-d", "link", "show", DEV)[0]
    assert link["mtu"] == 1500 - 60 and link["linkinfo"]["info_kind"] == "tun"
    env = open(one.subnet_file()).read()
    assert "WEFT_MTU=1440\n" in env
    routes = {(r["dst"], r.get("gateway"), r["dev"]) for r in one.ns.ip_json("route", "show", "proto", "119")}
    assert routes == {(n.status()["lease"]["subnet"], None, DEV) for n in nodes[1:]}
    # the private key: 0600 in the state dir, not in etcd, not in any log
    key_file = os.path.join(one.state_dir, "weft", "wireguard.key")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    private = open(key_file).read().strip()
    leases = cluster.weftctl("leases", "weft", "--json").stdout
    dump = cluster.etcd.etcdctl("get", "--prefix", "/", check=True).stdout
    assert public_key(one) in dump and private not in dump and private not in leases
    assert private not in one.log()
    # weftctl status names the implementation and the key
    status = one.ns.run([f"{cluster.installed}/bin/weftctl", "status", "--run-dir", one.run_dir]).stdout
    assert f"wireguard  {DEV} (userspace), port {PORT}, public key {public_key(one)}" in status
    assert "userspace implementation" in one.log()


def test_dual_stack_pods_talk_over_one_peer_per_node(cluster):
    config = {**WIREGUARD, "EnableIPv6": True, "IPv6Network": "fd00:246::/48"}
    one, two = start(cluster, 2, config)
    pods = [one.add_pod(), two.add_pod()]
    assert all(len(pod.ips) == 2 and ":" in pod.ips[1] for pod in pods)
    lease = two.status()["lease"]
    want = {public_key(two): (f"{two.ip}:{PORT}", tuple(sorted([lease["subnet"], lease["ipv6Subnet"]])))}
    wait_for(lambda: peers(one) == want, 30, 0.2, what=f"node1 has node2's peer with both subnets ({want})")
    v6_routes = one.ns.ip_json("-6", "route", "show", "proto", "119")
    assert [(r["dst"], r["dev"]) for r in v6_routes] == [(lease["ipv6Subnet"], DEV)]
    wait_for(lambda: pods[0].ping(pods[1].ips[1]), 40, 0.2, what="the first IPv6 ping (handshake)")
    assert_full_mesh(pods, tcp=False)


def _capture(cluster, send):
    """Run `send()` while tcpdump in the underlay namespace writes every packet on the
    bridge to a file; returns (bytes of the capture, summary lines)."""
    path = os.path.join(cluster.workdir, f"cap-{suffix()}.pcap")
    dump = subprocess.Popen(["ip", "netns", "exec", cluster.underlay.name, "tcpdump", "-i", "ul0", "-U",
                             "--immediate-mode", "-n", "-s", "0", "-w", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert "listening" in dump.stderr.readline().decode()
        send()
    finally:
        time.sleep(1)  # let the last frames reach the file before tcpdump stops
        dump.terminate()
        dump.wait(10)
    raw = open(path, "rb").read()
    lines = subprocess.run(["tcpdump", "-n", "-r", path], capture_output=True, text=True).stdout.splitlines()
    return raw, lines


def _send_marker(nodes, marker: str, port: int):
    """Pods on node1 and node2 talk once (the handshake, polled), then `send()` sends
    the marker pod to pod over TCP three times."""
    src, dst = nodes[0].add_pod(), nodes[1].add_pod()
    wait_tcp(src, dst, port, "pod-to-pod TCP before the capture")

    def send():
        server = dst.serve_tcp(port + 1, 3)
        try:
            for _ in range(3):
                assert src.tcp(dst.ip, port + 1, marker), "the marker's TCP exchange failed"
        finally:
            server.kill()
            server.wait()
    return send


@pytest.mark.parametrize("backend", ["wireguard", "vxlan"])
def test_underlay_sees_only_wireguard_udp_and_never_the_payload(cluster, backend):
    nodes = start(cluster, 2, WIREGUARD if backend == "wireguard" else VXLAN)
    marker = f"WEFT-CLEAR-{suffix(10)}"
    raw, lines = _capture(cluster, _send_marker(nodes, marker, 7200))
    between_nodes = [l for l in lines if f"{nodes[0].ip}." in l and f"{nodes[1].ip}." in l]
    if backend == "vxlan":  # the same check on the clear overlay: it can fail
        assert marker.encode() in raw, "the capture never saw the marker sent over VXLAN: the check proves nothing"
        return
    assert marker.encode() not in raw
    assert between_nodes, "no packet between the nodes was captured"
    off = [l for l in between_nodes if f".{PORT}: UDP" not in l and f".{PORT} > " not in l]
    assert not off, f"non-WireGuard traffic between the nodes: {off[:5]}"


def _leases(cluster) -> list:
    return json.loads(cluster.weftctl("leases", "weft", "--json").stdout)


def test_agent_restart_keeps_key_device_and_traffic(cluster):
    nodes = start(cluster, 2, WIREGUARD)
    one, two = nodes
    src, dst = one.add_pod(), two.add_pod()
    wait_tcp(src, dst, 7300, "pod-to-pod TCP before the restart")
    key, pid, before = public_key(one), one.wireguard_pids()[DEV], peers(one)
    one.stop_agent()
    # wireguard-go outlives weftd, so the datapath (and the pods' traffic) stays
    assert one.wireguard_pids() == {DEV: pid}
    assert peers(one) == before
    server = dst.serve_tcp(7301, 1)
    try:
        assert src.tcp(dst.ip, 7301), "pod traffic stopped while weftd was down"
    finally:
        server.kill()
        server.wait()
    one.start_agent()
    one.wait_ready()
    assert public_key(one) == key and one.status()["wireguard"]["implementation"] == "userspace"
    assert one.wireguard_pids() == {DEV: pid}, "the restarted agent started a second wireguard-go"
    assert [row for row in _leases(cluster) if row["node"] == "node1"]
    wait_peers(two, [one], "node2 still has node1's unchanged key")
    assert peers(one) == before
    wait_tcp(src, dst, 7302, "pod-to-pod TCP after the restart")
    # wireguard-go dies under a running agent: a reconcile sets the device up again
    created = one.log().count("(created)")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: one.wireguard_pids().get(DEV) not in (None, pid), 30, 0.1,
             what="node1's agent starts a new wireguard-go")
    wait_peers(one, [two], "node1's peers are back on the new device")
    assert one.log().count("(created)") == created + 1
    assert public_key(one) == key
    wait_tcp(src, dst, 7303, "pod-to-pod TCP after wireguard-go was replaced")


def test_key_rotation_reaches_every_peer_and_traffic_recovers(cluster):
    nodes = start(cluster, 3, WIREGUARD)
    one, two, three = nodes
    pods = [node.add_pod() for node in nodes]
    wait_tcp(pods[0], pods[1], 7400, "node1 -> node2 before rotation")
    wait_tcp(pods[2], pods[1], 7401, "node3 -> node2 before rotation")
    old_key = public_key(two)
    old_private = open(os.path.join(two.state_dir, "weft", "wireguard.key")).read()
    two.agent.send_signal(signal.SIGHUP)
    wait_for(lambda: public_key(two) != old_key, 20, 0.1, what="node2 reports a new public key")
    new_key = public_key(two)
    key_file = os.path.join(two.state_dir, "weft", "wireguard.key")
    assert open(key_file).read() != old_private and stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    lease = [row for row in _leases(cluster) if row["node"] == "node2"]
    assert lease and new_key in json.dumps(lease), lease
    for node in (one, three):  # the watch brings the new key; the old peer is gone
        wait_peers(node, [n for n in nodes if n is not node], "peers carry node2's new key")
        assert old_key not in peers(node)
    wait_tcp(pods[0], pods[1], 7402, "node1 -> node2 after rotation")
    wait_tcp(pods[1], pods[2], 7403, "node2 -> node3 after rotation")
    assert "node key rotated" in two.log()


def test_reconcile_restores_a_deleted_peer_and_node_removal_drops_it(cluster):
    nodes = start(cluster, 3, WIREGUARD)
    one, two, three = nodes
    three_key = public_key(three)
    subnet = three.status()["lease"]["subnet"]
    # drift: remove node3's peer from node1 behind the agent's back
    one.wg("set", DEV, "peer", three_key, "remove")
    assert three_key not in peers(one)
    wait_peers(one, [two, three], "node1's reconcile restores node3's deleted peer")
    wait_for(lambda: "was missing" in one.log() and three_key in one.log(), 20,
             what="node1 logs the repaired peer")
    assert one.status()["driftRepaired"] >= 1
    # node removal: node3 leaves (its etcd lease revoked); both others drop peer and route
    lease_id = [row for row in _leases(cluster) if row["node"] == "node3"][0]["leaseID"]
    three.stop_agent()
    cluster.etcd.etcdctl("lease", "revoke", format(lease_id, "x"), check=True)
    for node in (one, two):
        wait_for(lambda: three_key not in peers(node), 20, 0.1, what=f"{node.name} drops node3's peer")
        wait_for(lambda: subnet not in node.ns.ip("route", "show", "proto", "119"), 20, 0.1,
                 what=f"{node.name} drops node3's route")
        assert peers(node) == expected_peers(node, [n for n in (one, two) if n is not node])


def _fake_lease(cluster, subnet: str, data: dict):
    value = {"PublicIP": "192.168.100.77", "NodeName": "forged", "BackendType": "wireguard",
             "BackendData": data}
    key = f"/weft/networks/weft/subnets/{subnet.replace('/', '-')}"
    cluster.etcd.etcdctl("put", key, json.dumps(value), check=True)


FORGED_DATA = [  # (BackendData, what the agent says)
    ({"PublicKey": "bm90IGEga2V5", "ListenPort": PORT}, "is 9 bytes, a WireGuard key is 32"),
    ({"PublicKey": "!!!not base64!!!", "ListenPort": PORT}, "is not base64"),
    ({"PublicKey": "x" * 43 + "=", "ListenPort": 70000}, "ListenPort 70000 must be an integer"),
]


def test_leases_with_a_malformed_key_or_port_are_refused(cluster):
    nodes = start(cluster, 2, WIREGUARD)
    one, two = nodes
    before = peers(one)
    # subnets no node holds (leases are picked at random: a forged put on a node's own
    # key would replace its real lease, and the test would see that instead)
    held = {node.status()["lease"]["subnet"] for node in nodes}
    free = [s for s in (f"10.246.{n}.0/24" for n in range(200, 210)) if s not in held]
    forged = [(subnet, data, complaint) for subnet, (data, complaint) in zip(free, FORGED_DATA)]
    for subnet, data, _ in forged:
        _fake_lease(cluster, subnet, data)
    for subnet, _, complaint in forged:
        key = subnet.replace("/", "-")
        wait_for(lambda: any(complaint in line and key in line for line in one.log().splitlines()), 20, 0.1,
                 what=f"node1 refuses the forged lease {key} ({complaint})")
    # nothing programmed: same peers, no route to a forged subnet, even after a reconcile
    last = one.status()["lastReconcile"] or 0
    wait_for(lambda: (one.status()["lastReconcile"] or 0) > last, 20, 0.1, what="a reconcile after the puts")
    assert peers(one) == before
    routes = one.ns.ip("route", "show")
    assert not [subnet for subnet, _, _ in forged if subnet.split("/")[0] in routes]
    # operators see why: weftctl leases marks them unreadable, naming the key
    table = cluster.weftctl("leases", "weft").stdout
    assert all(f"unreadable: lease {s.replace('/', '-')}" in table for s, _, _ in forged), table


def test_a_failed_peer_write_is_retried_long_before_the_next_pass(tmp_path, installed):
    """A fresh cluster's pods must reach each other within seconds (issue 23: 12 s), and
    a peer whose write failed used to wait for the next periodic pass (10 s by default)
    and then for wireguard-go's handshake retry (5 s).  Here the interval is an hour:
    node1's weftd loses sight of wireguard-go's socket (an empty tmpfs mounted over the
    socket directory in weftd's own mount namespace; wireguard-go, in its own, serves
    on) while a new lease arrives, so the write fails; once the socket is visible again,
    a retry programs the peer."""
    cluster = Cluster(tmp_path / "cluster", installed, reconcile_interval=3600.0)
    try:
        one, two = cluster.start_nodes(2, WIREGUARD)
        wait_peers(one, [two], "node2's peer")
        hidden = os.path.join(one.run_dir, "wireguard", "wireguard")
        inside_weftd = ["nsenter", "-t", str(one.agent.pid), "-m"]
        new_key = base64.b64encode(bytes([7]) * 32).decode()
        sh([*inside_weftd, "mount", "-t", "tmpfs", "-o", "size=64k", "weft-test", hidden])
        try:
            _fake_lease(cluster, "10.246.210.0/24", {"PublicKey": new_key, "ListenPort": PORT})
            wait_for(lambda: "programmed failed" in one.log(), 20, 0.1, what="node1's write of the new peer fails")
        finally:
            sh([*inside_weftd, "umount", hidden])
        wait_for(lambda: new_key in peers(one), 30, 0.2,
                 what="a retry programs the new peer (the next periodic pass is an hour away)")
        assert "(full read: retry)" in one.log()
        assert peers(one)[new_key] == ("192.168.100.77:51820", ("10.246.210.0/24",))
    finally:
        cluster.cleanup()


STARTS = 20  # fresh 3-node clusters (1 in 8 had a pair that never connected: issue 23)


def test_fresh_three_node_clusters_connect_every_pair_every_time(tmp_path, installed, monkeypatch):
    """A start-up race left two nodes' pods unable to reach each other in about 1 of 8
    fresh 3-node clusters.  Here 3 fresh agents (new keys, leases, wireguard-go
    devices, pods) start at once, with the default 10 s reconcile interval so a quick
    reconcile cannot hide a missed peer, STARTS times over; every ordered pair of pods
    must ping within 12 s every time.  etcd and the underlay bridge are kept between
    rounds (the leases are deleted) to keep the test short.  wireguard-go logs verbosely
    (LOG_LEVEL, inherited through weftd), so a failure shows each side's handshakes
    (python -m lab.wireguard_starts runs the same rounds with fresh etcds, under load)."""
    monkeypatch.setenv("LOG_LEVEL", "verbose")
    cluster = Cluster(tmp_path / "cluster", installed, reconcile_interval=10.0)
    failures = []
    try:
        cluster.set_network("weft", WIREGUARD)
        for round_ in range(STARTS):
            nodes = [cluster.add_node() for _ in range(3)]
            for node in nodes:
                node.start_agent()
            for node in nodes:
                node.wait_ready()
            pods = [node.add_pod() for node in nodes]
            for src, dst in itertools.permutations(pods, 2):
                try:
                    wait_for(lambda: src.ping(dst.ip, wait=1), 12, 0.1,
                             what=f"round {round_}: {src.node.name} -> {dst.node.name}")
                except TimeoutError as exc:
                    failures.append(f"{exc}; {_programmed(src.node)}; {_programmed(dst.node)}")
            for node in nodes:  # the next round's nodes get new state dirs: new keys, node IDs
                node.cleanup()
                cluster.nodes.remove(node)
                shutil.rmtree(node.dir)
            cluster.etcd.etcdctl("del", "--prefix", "/weft/networks/weft/subnets/", check=True)
    finally:
        cluster.cleanup()
    assert not failures, failures[:6]


def _programmed(node) -> str:
    """What a node's wireguard-go holds, for a failure message (never the private key)."""
    logged = [line[:300] for line in node.log().splitlines()
              if any(word in line for word in ("programmed", "repaired", '"error"', "warning"))]
    try:
        held = f"peers {sorted(peers(node).values())}, handshakes {node.wg('show', DEV, 'latest-handshakes').split()}"
    except (RuntimeError, KeyError) as exc:
        held = f"wg unreadable ({exc})"
    wg_log = file_tail(os.path.join(node.run_dir, "wireguard", f"{DEV}.log"), 400).splitlines()
    handshakes = [line[:200] for line in wg_log if "andshake" in line or "invalid" in line or "Interface" in line]
    return f"{node.name}: {held}; log: {logged[-6:]}; wireguard-go: {handshakes[-12:]}"


def _relists(node) -> int:
    return node.log().count("relisting leases")


def test_a_rotated_key_that_could_not_be_published_is_published_by_the_retry(tmp_path, installed):
    """SIGHUP while etcd refuses this node's writes (its role made read-only: the watches
    and lease keepalives go on, so nothing relists): the new key is on the device but not
    in the lease.  The agent says so (status, log) and keeps trying; once etcd takes the
    write, the lease carries the new key, peers pick it up and traffic flows, with no
    relist and no restart."""
    from lab.etcd import WEFT_PREFIX, WEFT_USER

    cluster = Cluster(tmp_path / "cluster", installed, etcd_auth=True)
    try:
        nodes = start(cluster, 3, WIREGUARD)
        one, two, three = nodes
        pods = [node.add_pod() for node in nodes]
        wait_tcp(pods[0], pods[1], 7500, "node1 -> node2 before rotation")
        old_key, relists = public_key(two), _relists(two)

        cluster.etcd.etcdctl("role", "revoke-permission", WEFT_USER, WEFT_PREFIX, "--prefix=true", check=True)
        cluster.etcd.etcdctl("role", "grant-permission", WEFT_USER, "--prefix=true", "read", WEFT_PREFIX, check=True)
        try:
            two.agent.send_signal(signal.SIGHUP)
            wait_for(lambda: (two.status().get("unpublished") or "").startswith("this node's new backend data"),
                     60, 0.1, what="node2 reports its new key as unpublished")
            new_key = public_key(two)
            assert new_key != old_key
            status = two.ns.run([f"{cluster.installed}/bin/weftctl", "status", "--run-dir", two.run_dir]).stdout
            assert "unpublished this node's new backend data" in status
            assert "not in its lease yet" in two.log()
            assert new_key not in json.dumps(_leases(cluster))
        finally:
            cluster.etcd.etcdctl("role", "grant-permission", WEFT_USER, "--prefix=true", "readwrite", WEFT_PREFIX,
                                 check=True)
        wait_for(lambda: two.status().get("unpublished") is None, 60, 0.1, what="node2 published its new key")
        lease = [row for row in _leases(cluster) if row["node"] == "node2"]
        assert new_key in json.dumps(lease), lease
        for node in (one, three):
            wait_peers(node, [n for n in nodes if n is not node], "peers carry node2's new key")
        wait_tcp(pods[0], pods[1], 7501, "node1 -> node2 after the late publish")
        wait_tcp(pods[1], pods[2], 7502, "node2 -> node3 after the late publish")
        assert _relists(two) == relists, "the key was published by a relist, not by the retry"
        assert "lease published with this node's current backend data" in two.log()
    finally:
        cluster.cleanup()


def _hold_udp(node, port):
    """A process holding UDP `port` (IPv4 and IPv6) in the node's namespace; stop it by PID."""
    code = ("import socket, sys, time\n"
            "a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(('0.0.0.0', int(sys.argv[1])))\n"
            "b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
            "b.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); b.bind(('::', int(sys.argv[1])))\n"
            "print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen(["ip", "netns", "exec", node.ns.name, "python3", "-c", code, str(port)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def _release(holder):
    holder.kill()
    holder.wait()


def test_wireguard_go_that_cannot_bind_its_port_is_repaired_when_the_port_frees(cluster):
    one, two = start(cluster, 2, WIREGUARD)
    src, dst = one.add_pod(), two.add_pod()
    wait_tcp(src, dst, 7600, "pod-to-pod TCP before")
    # 1. a restart whose new wireguard-go finds the port taken (an old one still exiting)
    one.stop_agent()
    one.stop_wireguard()
    holder = _hold_udp(one, PORT)
    try:
        one.start_agent()
        problem = f"cannot listen on UDP port {PORT}"
        wait_for(lambda: problem in ((one.status() or {}).get("problem") or ""), 60, 0.1,
                 what="node1's status names the port in use")
        status = one.ns.run([f"{cluster.installed}/bin/weftctl", "status", "--run-dir", one.run_dir],
                            check=False).stdout  # not ready: exit status 1
        assert problem in status and "NOT READY" in status
        assert problem in one.log()
    finally:
        _release(holder)
    one.wait_ready()
    wait_peers(one, [two], "node1's peers after the port freed")
    wait_tcp(src, dst, 7601, "pod-to-pod TCP after the port freed")
    wait_tcp(dst, src, 7602, "and back")
    # 2. the running device loses its port (moved by hand, 51820 then taken): drift
    repaired = one.status()["driftRepaired"]
    one.wg("set", DEV, "listen-port", "40000")
    holder = _hold_udp(one, PORT)
    try:
        wait_for(lambda: "reports listen port 40000, not 51820" in
                 (one.status()["wireguard"].get("deviceProblem") or ""), 60, 0.1,
                 what="node1's status names the wrong port")
        status = one.ns.run([f"{cluster.installed}/bin/weftctl", "status", "--run-dir", one.run_dir],
                            check=False).stdout
        assert "reports listen port 40000, not 51820" in status
        wait_for(lambda: problem in one.log(), 30, 0.1, what="the failed repair is logged with its cause")
    finally:
        _release(holder)
    wait_for(lambda: one.status()["wireguard"].get("deviceProblem") is None, 60, 0.1,
             what="node1's port repaired")
    assert one.status()["driftRepaired"] > repaired
    assert f"device {DEV} listen port {PORT} private key #" in one.log()
    assert one.wg("show", DEV, "listen-port").strip() == str(PORT)
    wait_tcp(src, dst, 7603, "pod-to-pod TCP after the repair")
    wait_tcp(dst, src, 7604, "and back")
