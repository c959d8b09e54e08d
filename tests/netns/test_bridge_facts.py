"""weftd's bridge facts (datapath/bridge_facts.py, issue 27 item 2): an ADD served by
the agent skips reading a bridge that its ADDs found in place, and only while nothing
says it changed.  The handlers run as weftd runs them (roles.invoke, via "agent",
with BridgeFacts) in a process inside the test's node namespace; the bridge is changed
by hand between ADDs and read back with `ip -j`."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GATEWAY = "10.244.1.1"

# steps on stdin: ["add", netns path, container ID] | ["sh", argv] | ["drain"] | ["sleep", s];
# out: per ADD, its exit code and whether it read the bridge (links.ensure_bridge ran)
DRIVER = r"""
import json, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from cni_plugin.roles import invoke
from cni_plugin.datapath import links
from cni_plugin.datapath.bridge_facts import BridgeFacts

read = []
ensure_bridge = links.ensure_bridge
def counted(*args, **kwargs):
    read.append(True)
    return ensure_bridge(*args, **kwargs)
links.ensure_bridge = counted
conf, steps, max_age, cni_path = json.loads(sys.stdin.read())
facts = BridgeFacts(max_age=max_age)
out = []
for step in steps:
    if step[0] == "add":
        read.clear()
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": step[2], "CNI_NETNS": step[1], "CNI_IFNAME": "eth0",
               "CNI_PATH": cni_path}
        stdout, code = invoke("weft", env, json.dumps(conf).encode(), via="agent", bridges=facts)
        out.append({"code": code, "read_bridge": bool(read), "stdout": stdout.decode()})
    elif step[0] == "sh":
        subprocess.run(step[1], check=True)
    elif step[0] == "drain":  # what a lost notification looks like: read, never judged
        facts._changes.changed()
    elif step[0] == "sleep":
        time.sleep(step[1])
print(json.dumps(out))
"""


@pytest.fixture
def agent_adds(weft, node, tmp_path):
    def run(steps, max_age=60.0):
        conf = weft.conf()
        out = node.run([sys.executable, "-c", DRIVER, REPO], input=json.dumps([conf, steps, max_age, weft.cni_path]))
        return json.loads(out.stdout)
    return run


def bridge(node) -> dict:
    (link,) = node.ip_json("addr", "show", "cbr0")
    return link


def gateway_on_bridge(node) -> bool:
    return any(a["local"] == GATEWAY for a in bridge(node)["addr_info"] if a["family"] == "inet")


def test_unchanged_bridge_is_not_read_again_and_a_removed_gateway_is_put_back(agent_adds, node, pods):
    p = [pods() for _ in range(4)]
    out = agent_adds([["add", p[0].path, "f1"], ["add", p[1].path, "f2"], ["add", p[2].path, "f3"],
                      ["sh", ["ip", "addr", "del", f"{GATEWAY}/24", "dev", "cbr0"]],
                      ["add", p[3].path, "f4"]])
    assert [o["code"] for o in out] == [0, 0, 0, 0], out
    assert out[0]["read_bridge"] and not out[2]["read_bridge"], out  # the facts serve once recorded
    assert out[3]["read_bridge"], out  # the address notification named the bridge
    assert gateway_on_bridge(node)


def test_a_bridge_changed_or_deleted_by_hand_is_checked_again(agent_adds, node, pods):
    p = [pods() for _ in range(5)]
    out = agent_adds([["add", p[0].path, "g1"], ["add", p[1].path, "g2"],
                      ["sh", ["ip", "link", "set", "cbr0", "mtu", "1400"]],
                      ["add", p[2].path, "g3"],
                      ["sh", ["ip", "link", "del", "cbr0"]],
                      ["add", p[3].path, "g4"], ["add", p[4].path, "g5"]])
    assert [o["code"] for o in out] == [0] * 5, out
    assert out[2]["read_bridge"] and out[3]["read_bridge"], out
    link = bridge(node)
    assert link["mtu"] == 1500 and "UP" in link["flags"] and gateway_on_bridge(node)
    # the pods added after the bridge came back hang off it, the deleted bridge's are gone
    ports = {lk["ifname"] for lk in node.ip_json("link", "show", "master", "cbr0")}
    assert len(ports) == 2, ports


def test_a_lost_notification_is_caught_by_the_age_limit(agent_adds, node, pods):
    """The backstop: facts older than max_age are checked again whatever the
    notifications said (here one is read without being judged, as a lost one)."""
    p = [pods() for _ in range(3)]
    out = agent_adds([["add", p[0].path, "h1"], ["add", p[1].path, "h2"],
                      ["sh", ["ip", "addr", "del", f"{GATEWAY}/24", "dev", "cbr0"]], ["drain"],
                      ["sleep", 1.5], ["add", p[2].path, "h3"]], max_age=1.0)
    assert [o["code"] for o in out] == [0, 0, 0], out
    assert out[2]["read_bridge"], out
    assert gateway_on_bridge(node)
