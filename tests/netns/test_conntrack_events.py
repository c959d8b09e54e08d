"""The conntrack event socket of flow records (datapath/conntrack.py) in a fresh node
namespace: the agent's socket joins DESTROY only, so the kernel builds no message for a
connection's start or its state changes (a socket joined to every group gets them);
a TCP connection's DESTROY comes once its entry leaves TIME_WAIT and carries its
final counters (nf_conntrack_acct on: the bytes sent, headers included), its start and
stop times and the state it ended in.  Each test shortens TIME_WAIT to 1 s in its own
namespace (a per-namespace knob), never in the root namespace."""

import _socket
import json
import socket
import subprocess
import sys
import time

from cni_plugin.datapath import conntrack
from cni_plugin.datapath import nlcodec as nl
from lab.cluster import REPO

CONNECTIONS = 3
TRAFFIC = """
import socket, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", {port})); srv.listen()
def serve():
    for _ in range({n}):
        c, _ = srv.accept(); c.recv(1000); c.sendall(b"y"); c.close()
t = threading.Thread(target=serve); t.start()
for _ in range({n}):
    s = socket.create_connection(("127.0.0.1", {port})); s.sendall(b"x" * 1000); s.recv(1); s.recv(1); s.close()
t.join()
"""
GC_WAIT = 90.0  # seconds: the kernel's conntrack garbage collection runs at most a minute apart


def _tracked(node, time_wait=1):
    node.run(["ip", "link", "set", "lo", "up"])
    node.run(["nft", "-f", "-"], input="add table inet t\nadd chain inet t c { type filter hook output priority 0; }\n"
                                       "add rule inet t c ct state new counter\n")
    node.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_timestamp=1"])
    node.set_tcp_time_wait(time_wait)


def _every_group(node):
    """A plain socket in the node joined to NEW, UPDATE and DESTROY (what the agent's is not)."""
    from cni_plugin.datapath.rtnl import socket_in

    sock = socket_in(node.path, nl.NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
    sock.bind((0, (1 << (nl.NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (nl.NFNLGRP_CONNTRACK_UPDATE - 1)) |
               (1 << (nl.NFNLGRP_CONNTRACK_DESTROY - 1))))
    return sock


def _raw(sock) -> list:
    """(message, NLM_F_CREATE, TCP state) of everything queued on a socket."""
    out = []
    while True:
        try:
            data = sock.recv(1 << 17, _socket.MSG_DONTWAIT)
        except BlockingIOError:
            return out
        for offset, length, kind, flags, _ in nl.messages(data):
            out.append((kind & 0xFF, bool(flags & nl.NLM_F_CREATE), nl.conntrack_brief(data, offset, length)[1]))


def _expire(node, time_wait=1):
    """Once TIME_WAIT is over, the expired entries killed by a dump of the table."""
    time.sleep(time_wait + 0.5)
    node.expire_conntrack()


def _destroyed(events, count, port) -> list:
    """The DESTROY events of `count` TCP connections to `port`, waited for (bounded)."""
    out, deadline = [], time.monotonic() + GC_WAIT
    while len(out) < count and time.monotonic() < deadline:
        out += [e for e in events.receive(0.5) if e.orig.proto == 6 and e.orig.dport == port]
    return out


def test_the_agent_joins_destroy_only_and_gets_each_connections_final_state(node):
    _tracked(node)
    every = _every_group(node)
    agents = conntrack.ConntrackEvents(netns_path=node.path)
    try:
        node.run([sys.executable, "-c", TRAFFIC.format(n=CONNECTIONS, port=9000)], timeout=30)
        _expire(node)
        destroyed = _destroyed(agents, CONNECTIONS, 9000)
        everything = _raw(every)
    finally:
        every.close()
        agents.close()
    assert len(destroyed) == CONNECTIONS and {e.event for e in destroyed} == {"destroy"}
    assert {e.tcp_state for e in destroyed} == {nl.TCP_CONNTRACK_TIME_WAIT}
    for entry in destroyed:  # the final counters, and a stop about TIME_WAIT after the start
        packets, octets = entry.orig_counters
        assert octets >= 1000 + packets * 40
        assert entry.stop_ns - entry.start_ns >= 900_000_000  # timeouts count in jiffies
    assert agents.lost == 0
    new = [e for e in everything if e[0] == nl.IPCTNL_MSG_CT_NEW and e[1]]
    updates = [e for e in everything if e[0] == nl.IPCTNL_MSG_CT_NEW and not e[1]]
    assert len(new) >= CONNECTIONS and len(updates) >= 3 * CONNECTIONS  # SYN_RECV, ESTABLISHED, ... TIME_WAIT


def test_lingering_reads_the_namespaces_own_timeouts(node):
    _tracked(node, time_wait=7)
    out = node.run([sys.executable, "-c", "import json; from cni_plugin.datapath import conntrack; "
                    "print(json.dumps(conntrack.lingering()))"], cwd=REPO).stdout
    lingering = {int(k): v for k, v in json.loads(out).items()}
    assert lingering[nl.TCP_CONNTRACK_TIME_WAIT] == 7_000_000_000
    assert lingering[nl.TCP_CONNTRACK_CLOSE] > 0


def test_every_destroy_of_many_connections_arrives(node):
    """2,000 connections ending at once: every DESTROY read, none lost to ENOBUFS."""
    count = 2000
    _tracked(node)
    events = conntrack.ConntrackEvents(netns_path=node.path)
    try:
        node.run([sys.executable, "-c", TRAFFIC.format(n=count, port=9002)], timeout=60)
        _expire(node)
        destroyed = _destroyed(events, count, 9002)
    finally:
        events.close()
    assert len({e.id for e in destroyed}) == count and events.lost == 0


REUSE = """
import socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 9003)); srv.listen()
def client():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 40003)); s.connect(("127.0.0.1", 9003))
    return s
first = client(); c, _ = srv.accept(); c.sendall(b"y"); c.close(); first.recv(1); first.recv(1); first.close()
time.sleep(0.5)                   # its entry lingers in TIME_WAIT
second = client(); again, _ = srv.accept()
print("open", flush=True); sys.stdin.readline()
"""


def test_a_reused_client_port_ends_the_closed_entry_at_once(node):
    """A new connection on the tuple of one in TIME_WAIT kills the old entry: its
    DESTROY comes then, not TIME_WAIT after its close (why a record's `end`, the stop
    time less TIME_WAIT, is never put before its start)."""
    _tracked(node, time_wait=120)
    events = conntrack.ConntrackEvents(netns_path=node.path)
    traffic = subprocess.Popen(["ip", "netns", "exec", node.name, sys.executable, "-c", REUSE],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert traffic.stdout.readline().strip() == "open"
        destroyed = [e for e in events.receive(2.0) if e.orig.dport == 9003]
    finally:
        events.close()
        traffic.communicate("\n", timeout=10)
    assert [(d.orig.sport, d.tcp_state) for d in destroyed] == [(40003, nl.TCP_CONNTRACK_TIME_WAIT)]
    assert destroyed[0].stop_ns - destroyed[0].start_ns < 120_000_000_000
