"""The source-validation table under load it was not sized for (datapath/source_guard.py).

A pod that forges more distinct sources than a seen set holds (1,024 a minute) fills
the set; recording then fails.  Every forged frame must still be dropped and counted:
the recording and the drop are separate rules.  Real namespaces: a node with a bridge,
a validated pod and an unvalidated receiver; the receiver's count is the oracle.
"""

import json
import sys
import subprocess

from lab.cluster import REPO

FORGED = 1100  # more than SEEN_SIZE distinct sources
SENDER = r"""
import socket, sys
sys.path.insert(0, sys.argv[1])
from lab import spoof
dev, src_mac, dst_mac, dst, count = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((dev, 0))
for i in range(count):
    forged = f"10.99.{i // 250}.{i % 250 + 1}"
    sock.send(spoof.udp_frame(src_mac, dst_mac, forged, dst, 40000, 7100, b"forged"))
sock.send(spoof.udp_frame(src_mac, dst_mac, sys.argv[7], dst, 40000, 7100, b"own"))
"""
RECEIVER = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 7100))
sock.settimeout(5)
print("listening", flush=True)
got = []
try:
    while True:
        data, peer = sock.recvfrom(64)
        got.append(data.decode())
        if data == b"own":
            break
except socket.timeout:
    pass
print(len([g for g in got if g == "forged"]), "own" in got, flush=True)
"""
GUARD = r"""
import ipaddress, json, sys
sys.path.insert(0, sys.argv[1])
from cni_plugin.datapath import source_guard
if sys.argv[2] == "add":
    source_guard.add_port("t", source_guard.Port(sys.argv[3], sys.argv[4], (ipaddress.ip_address(sys.argv[5]),)))
else:
    print(json.dumps({"packets": source_guard.dropped_packets("t"),
                      "seen": len([e for e in source_guard.dropped_sources("t") if e[0] == "seen4"])}))
"""


def _mac(ns, dev):
    return ns.ip_json("link", "show", dev)[0]["address"]


def _link(node, ns, port, ip):
    node.run(["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.name])
    node.run(["ip", "link", "set", port, "master", "br0", "up"])
    ns.run(["ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
    ns.run(["ip", "link", "set", "eth0", "up"])


def test_a_full_seen_set_still_drops_every_forged_frame(node, pods):
    node.run(["ip", "link", "add", "br0", "type", "bridge"])
    node.run(["ip", "link", "set", "br0", "up"])
    attacker, receiver = pods(), pods()
    _link(node, attacker, "wft00000000a001", "10.98.0.5")
    _link(node, receiver, "wft00000000a002", "10.98.0.6")
    python = sys.executable
    node.run([python, "-c", GUARD, REPO, "add", "wft00000000a001", _mac(attacker, "eth0"), "10.98.0.5"])
    listener = subprocess.Popen(["ip", "netns", "exec", receiver.name, python, "-c", RECEIVER, "10.98.0.6"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        attacker.run([python, "-c", SENDER, REPO, "eth0", _mac(attacker, "eth0"), _mac(receiver, "eth0"),
                      "10.98.0.6", str(FORGED), "10.98.0.5"])
        forged, own = listener.stdout.readline().split()
    finally:
        listener.kill()
        listener.wait()
    assert (int(forged), own) == (0, "True"), "forged frames got through once the seen set was full"
    counted = json.loads(node.run([python, "-c", GUARD, REPO, "read"]).stdout)
    assert counted["packets"] >= FORGED, counted  # every forged frame counted, recorded or not
    assert counted["seen"] <= 1024 < FORGED, counted
