"""The control-plane guard's table (datapath/control_guard.py) in a real node namespace,
without an agent: what ensure() leaves in the kernel (read back with the `nft` tool),
how it changes (elements in place; a rebuild only when the shape is wrong), and IPv6
pod traffic to an etcd endpoint on the node itself refused while the node and a pod
named as an exception get through."""

import json
import subprocess
import sys

from lab.cluster import REPO

TABLE = "weft_control_v6net"
SPEC = dict(pods=["fd00:0:0:1::/64", "10.244.1.0/24"], cluster=["fd00::/48", "10.244.0.0/16"],
            etcd=[("fd00:0:0:1::1", 2379), ("192.168.100.254", 2379)], ports=[("tcp", 9465), ("udp", 8472)],
            peers=["192.168.100.2", "fd99::2"])


def ensure(node, **changes):
    """control_guard.ensure() run inside the node namespace; returns its Outcome as a dict."""
    spec = {**SPEC, **changes}
    code = ("import json, sys\nfrom cni_plugin.datapath import control_guard as cg\n"
            "spec = json.loads(sys.argv[1])\n"
            "spec['etcd'] = [tuple(e) for e in spec['etcd']]; spec['ports'] = [tuple(p) for p in spec['ports']]\n"
            "out = cg.ensure(cg.guard('v6net', **spec))\n"
            "print(json.dumps({'action': out.action, 'details': out.details}))\n")
    out = node.run([sys.executable, "-c", code, json.dumps(spec)], cwd=REPO)
    return json.loads(out.stdout)


def listing(node):
    out = node.run(["nft", "-j", "list", "table", "inet", TABLE], check=False)
    return json.loads(out.stdout)["nftables"] if out.returncode == 0 else None


def elements(node, name):
    for item in listing(node) or []:
        if "set" in item and item["set"]["name"] == name:
            return sorted(" . ".join(map(str, e["concat"])) if isinstance(e, dict) and "concat" in e else
                          f"{e['prefix']['addr']}/{e['prefix']['len']}" if isinstance(e, dict) else str(e)
                          for e in item["set"].get("elem", []))
    return None


def handles(node, kind):
    return sorted(item[kind]["handle"] for item in listing(node) or [] if kind in item)


def connect(ns, address, port):
    code = ("import socket, sys\n"
            "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n"
            "except OSError:\n sys.exit(1)\n")
    return ns.run([sys.executable, "-c", code, address, str(port)], check=False).returncode == 0


def test_the_table_holds_both_families_and_changes_in_place(node):
    assert ensure(node)["action"] == "created"
    assert elements(node, "etcd6") == ["fd00:0:0:1::1 . 2379"]
    assert elements(node, "etcd4") == ["192.168.100.254 . 2379"]
    assert elements(node, "pods6") == ["fd00:0:0:1::/64"] and elements(node, "cluster6") == ["fd00::/48"]
    assert elements(node, "peers6") == ["fd99::2"] and elements(node, "ports") == ["tcp . 9465", "udp . 8472"]
    chains = [item["chain"] for item in listing(node) if "chain" in item]
    assert {(c["name"], c.get("hook"), c.get("prio")) for c in chains} == \
        {("input", "input", -10), ("forward", "forward", -10), ("refuse", None, None)}
    assert ensure(node) == {"action": "unchanged", "details": []}
    rules = handles(node, "rule")
    # a pod let through, a peer gone: elements only, the rules stay as they are
    assert ensure(node, allowed=["fd00:0:0:1::7"], peers=["192.168.100.2"]) == \
        {"action": "updated", "details": ["set allowed6 +fd00:0:0:1::7", "set peers6 -fd99::2"]}
    assert handles(node, "rule") == rules and elements(node, "allowed6") == ["fd00:0:0:1::7"]
    # a rule deleted by hand: the table is rebuilt whole
    forward = [item["rule"] for item in listing(node) if "rule" in item and item["rule"]["chain"] == "forward"]
    node.run(["nft", "delete", "rule", "inet", TABLE, "forward", "handle", str(forward[-1]["handle"])])
    outcome = ensure(node, allowed=["fd00:0:0:1::7"], peers=["192.168.100.2"])
    assert outcome["action"] == "rebuilt" and "chain forward holds 5 rule(s), not its 6" in outcome["details"][0]
    assert len([1 for item in listing(node) if "rule" in item and item["rule"]["chain"] == "forward"]) == 6


def test_ipv6_pods_cannot_reach_etcd_on_the_node_unless_named(node, pods):
    """etcd (a TCP listener standing in for it) on the node's own pod-network address:
    the input hook refuses the pod, the node's own connection passes, and so does the
    pod once its address is in allowed6."""
    pod = pods()
    subprocess.run(["ip", "-n", node.name, "link", "add", "gw0", "type", "veth", "peer", "name", "eth0",
                    "netns", pod.name], check=True)
    node.run(["ip", "addr", "add", "fd00:0:0:1::1/64", "dev", "gw0", "nodad"])
    node.run(["ip", "link", "set", "gw0", "up"])
    node.run(["ip", "link", "set", "lo", "up"])
    pod.run(["ip", "addr", "add", "fd00:0:0:1::2/64", "dev", "eth0", "nodad"])
    pod.run(["ip", "link", "set", "eth0", "up"])
    listener = subprocess.Popen(["ip", "netns", "exec", node.name, sys.executable, "-c",
                                 "import socket, time\n"
                                 "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, "
                                 "socket.SO_REUSEADDR, 1)\n"
                                 "s.bind(('fd00:0:0:1::1', 2379)); s.listen(64); print('listening', flush=True)\n"
                                 "while True:\n c, _ = s.accept(); c.close()\n"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "listening"
        assert connect(pod, "fd00:0:0:1::1", 2379), "the stand-in etcd is not reachable at all"
        assert ensure(node)["action"] == "created"
        assert not connect(pod, "fd00:0:0:1::1", 2379), "an IPv6 pod reached etcd on its node"
        assert connect(node, "fd00:0:0:1::1", 2379), "the node lost its own etcd"
        knocked = next(item["set"] for item in json.loads(node.run(
            ["nft", "-j", "list", "set", "inet", TABLE, "knocked6"]).stdout)["nftables"] if "set" in item)
        assert [e["elem"]["val"]["concat"] for e in knocked["elem"]] == \
            [["fd00:0:0:1::2", "fd00:0:0:1::1", "tcp", 2379]]
        counter = next(item["counter"] for item in listing(node) if "counter" in item)
        assert counter["name"] == "refused" and counter["packets"] >= 1
        assert ensure(node, allowed=["fd00:0:0:1::2"])["action"] == "updated"
        assert connect(pod, "fd00:0:0:1::1", 2379), "the named pod was not let through"
    finally:
        listener.kill()
        listener.wait()
