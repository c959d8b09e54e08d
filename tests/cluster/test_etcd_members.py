"""weftd on a 3-member etcd cluster (real etcd processes, real agents, real kernel).

The agents get every member's endpoint.  Stopping the leader, then a second member
(quorum lost), must never touch the datapath: a ping between existing pods runs
through all of it and every echo request is answered, in sequence.  The agents say
they are degraded while there is no quorum (status file, /readyz) and recover by
themselves when it returns, each still holding the one lease it had.
"""

import json
import re
import signal
import subprocess

import pytest

from lab.cluster import Cluster, wait_for

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
PING_INTERVAL = "0.1"


@pytest.fixture
def cluster3(tmp_path, installed):
    made = Cluster(tmp_path / "cluster", installed, etcd_members=3)
    yield made
    made.cleanup()


def leases(cluster) -> dict:
    rows = json.loads(cluster.weftctl("leases", "weft", "--json").stdout)
    by_node = {}
    for row in rows:
        by_node.setdefault(row.get("node"), []).append((row["subnet"], row["leaseID"]))
    return by_node


def start_ping(pod, address) -> subprocess.Popen:
    """A ping from `pod` to `address` every 0.1 s until stop_ping (stopped by its PID)."""
    return subprocess.Popen(["ip", "netns", "exec", pod.ns.name, "ping", "-n", "-i", PING_INTERVAL,
                             "-W", "2", address], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_ping(ping) -> tuple:
    """(sequence numbers answered, requests sent) after SIGINT to our ping."""
    ping.send_signal(signal.SIGINT)
    out, _ = ping.communicate(timeout=10)
    answered = [int(n) for n in re.findall(r"icmp_seq=(\d+) ttl=", out)]
    sent = re.search(r"(\d+) packets transmitted", out)
    assert sent, f"ping printed no summary:\n{out[-2000:]}"
    return answered, int(sent.group(1)), out


def connected_members(cluster, nodes) -> dict:
    """member -> how many of the nodes' agents hold a TCP connection to it (from `ss`)."""
    counts = {m: 0 for m in cluster.etcd.members}
    for node in nodes:
        out = node.ns.run(["ss", "-Htn", "state", "established"]).stdout
        peers = {line.split()[-1] for line in out.splitlines() if line.strip()}
        for member in counts:
            if peers & {f"{member.host}:2379", f"[::ffff:{member.host}]:2379"}:
                counts[member] += 1
    return counts


def degraded(node):
    status = node.status() or {}
    return not status.get("ready", True) and "etcd" in (status.get("problem") or "") and status


def test_leader_loss_and_quorum_loss_keep_datapath(cluster3):
    cluster = cluster3
    cluster.set_network("weft", VXLAN)
    nodes = [cluster.add_node() for _ in range(2)]
    for node in nodes:
        node.start_agent()
        assert cluster.etcd.endpoint in node.agent.args  # every member's endpoint
    for node in nodes:
        node.wait_ready()
        wait_for(lambda: len(node.status()["peers"]) == 1, 20, what=f"{node.name} programs its peer")
    pod1, pod2 = nodes[0].add_pod(), nodes[1].add_pod()
    assert pod1.ping(pod2.ip)
    before = leases(cluster)
    assert sorted(before) == ["node1", "node2"] and all(len(v) == 1 for v in before.values()), before
    pings = [start_ping(pod1, pod2.ip), start_ping(pod2, pod1.ip)]
    try:
        # 1. the leader goes: a new one is elected, the agents keep (or regain) readiness
        leader = wait_for(cluster.etcd.leader, 20, what="an etcd leader")
        leader.stop()
        survivor = wait_for(cluster.etcd.leader, 20, what="a new etcd leader after the old one stopped")
        assert survivor is not leader
        for node in nodes:
            node.wait_status(lambda status: status.get("ready"), 30, "ready on the two remaining members")
        # ...and still follow changes: a third node joins and is programmed on both
        node3 = cluster.add_node()
        node3.start_agent()
        node3.wait_ready()
        for node in nodes:
            node.wait_status(lambda status: any("node3" in p for p in status.get("peers") or []), 30,
                             "programs node3 after the leader change", lines=60)

        # 2. one more member goes: no quorum; every agent says so, the kernel stays.  The
        # member stopped is the one fewest agents talk to: the others stay connected to a
        # member without quorum, whose reads and watches must not just stall
        counts = connected_members(cluster, [*nodes, node3])
        running = [m for m in cluster.etcd.members if m.process is not None]
        second = min(running, key=lambda m: counts[m])
        minority = next(m for m in running if m is not second)
        assert counts[minority] > 0, f"no agent is connected to the member left alone: {counts}"
        second.stop()
        for node in [*nodes, node3]:
            status = wait_for(lambda: degraded(node), 30,
                              what=f"{node.name} reports the lost etcd quorum (log {node.log_path})")
            code, body = node.http("/readyz")
            assert code == 503 and "etcd" in body, (code, body)
            assert node.agent.poll() is None, f"{node.name}'s agent exited without quorum"
        assert pod1.ping(pod2.ip) and pod2.ping(pod1.ip)

        # 3. quorum returns: the agents recover by themselves
        cluster.etcd.start()
        for node in [*nodes, node3]:
            wait_for(lambda: (node.status() or {}).get("ready"), 40,
                     what=f"{node.name} ready again after quorum returned (log {node.log_path})")
            assert node.http("/readyz")[0] == 200
    finally:
        results = [stop_ping(ping) for ping in pings]
    for answered, sent, out in results:
        # every request was answered, in order; only the one in flight at SIGINT may lack a reply
        assert answered == list(range(1, len(answered) + 1)) and len(answered) >= sent - 1, \
            f"packets lost: {sent} sent, {len(answered)} answered:\n{out[-1500:]}"
        assert sent >= 20, f"the ping ran too briefly to mean anything: {sent} sent"
    after = leases(cluster)
    assert {n: after[n] for n in ("node1", "node2")} == before, (before, after)
    assert sorted(after) == ["node1", "node2", "node3"] and all(len(v) == 1 for v in after.values()), after
    subnets = [rows[0][0] for rows in after.values()]
    assert len(set(subnets)) == 3, subnets
    print(f"\n3-member etcd: leader {leader.name}, then {second.name} stopped "
          f"({counts[minority]} agents left on {minority.name}); "
          + "; ".join(f"{len(a)}/{s} echo replies" for a, s, _ in results))
