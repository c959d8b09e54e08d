"""Source validation under attack (issue 22, "pods speak only as themselves").

A dual-stack, two-node VXLAN cluster with real etcd and real weftd.  In pod namespace
`sv`: a, b, c and x on node1 (x's netconf says `allowSpoofing: true`), b2 on node2.
A NetworkPolicy lets b and b2 receive UDP 7001 only from a and 192.0.2.0/24, and
UDP 7002 from anyone.  Pod c forges, from an AF_PACKET socket (lab/spoof.py), the
things NetworkPolicy and the neighbour caches trust: a's addresses, an allowed
outside address, another MAC (forged in the frame, and the pod's MAC really changed),
an ARP reply and a neighbour advertisement claiming a's addresses.

Every verdict is observed, never mocked:
  - a UDP receiver in b/b2 (lab/spoof.py `listen`) records the source of every
    datagram: the forged ones never arrive, c's own datagram to 7002 does, and a's
    datagram to 7001 (the marker that ends the listening) does;
  - neighbour entries read back with `ip -j neigh` in b and in node1;
  - the node's table read with `nft -j` (its drop counter, the pods' elements);
  - weftd's `weft_spoofed_packets_total{network}` and `weft_drift_repaired_total`,
    its status file's `sourceValidation`, and the denial journal through
    `weftctl policy denials --json`, which must name the pod.
Pod x is the control: the same forgeries from it succeed (it is exempt), so the
receivers and neighbour entries would have shown a forgery that got through.
The drift tests at the end delete an element, a rule and the whole table inside
node1's namespace and wait (bounded) for weftd to put them back.

A note on NetworkPolicy and neighbour discovery (found writing these tests, not part
of source validation): b is isolated for ingress, and the policy table drops the
neighbour advertisements addressed to b's own address (conntrack leaves ND
untracked, so "established,related" does not accept them, and no rule admits
ICMPv6), so b cannot resolve a neighbour over IPv6 by itself; validated or exempt
pods alike.  The tests make b learn a from a's solicitation instead.
"""

import ipaddress
import itertools
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from lab.attachment import host_veth
from lab.cli_helpers import metric_value
from lab.cluster import REPO, Cluster, wait_for

pytestmark = pytest.mark.root

NETWORK = "weft"
TABLE = "weft_source_weft"
DUAL = {"Network": "10.244.0.0/16", "EnableIPv6": True, "IPv6Network": "fd10:244::/48",
        "Backend": {"Type": "vxlan", "VNI": 1}}
NS = "sv"
PROTECTED, OPEN = 7001, 7002
OUTSIDE = "192.0.2.7"          # inside the policy's allowed ipBlock 192.0.2.0/24
FORGED_MAC = "02:00:5e:00:53:42"
CHANGED_MAC = "02:00:5e:00:53:43"
SPOOFED = f'weft_spoofed_packets_total{{network="{NETWORK}"}}'
DRIFT = f'weft_drift_repaired_total{{network="{NETWORK}"}}'
CONVERGE = 20.0   # reconcile interval 2 s: a few passes
LISTEN_SECONDS = 20
_serial = itertools.count()


# -- objects -----------------------------------------------------------------------------
def objects():
    docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {"ns": NS}}}]
    docs += [{"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": NS, "name": name,
                                                             "labels": {"pod": name}}}
             for name in ("a", "b", "c", "x", "b2")]
    docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "only-a", "namespace": NS},
                 "spec": {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In",
                                                                "values": ["b", "b2"]}]},
                          "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "a"}}},
                                                {"ipBlock": {"cidr": "192.0.2.0/24"}}],
                                       "ports": [{"protocol": "UDP", "port": PROTECTED}]},
                                      {"ports": [{"protocol": "UDP", "port": OPEN}]}]}})
    return docs


# -- the world ---------------------------------------------------------------------------
class World:
    def __init__(self, cluster, nodes):
        self.cluster, self.nodes = cluster, nodes
        self.node1, self.node2 = nodes
        self.pods = {}

    def __getattr__(self, name):  # world.a, world.b2 ...
        pods = self.__dict__.get("pods", {})
        if name in pods:
            return pods[name]
        raise AttributeError(name)

    def journal(self, node=None) -> list:
        """The spoofed records of node1's (or `node`'s) denial journal."""
        node = node or self.node1
        out = self.cluster.weftctl("policy", "denials", "--state-dir", node.state_dir, "--json").stdout
        return [r for r in json.loads(out or "[]") if r.get("kind") == "spoofed"]

    def spoofed_metric(self, node=None) -> float:
        code, body = (node or self.node1).http("/metrics")
        assert code == 200, body
        return metric_value(body, SPOOFED)

    def drift_metric(self, node=None) -> float:
        code, body = (node or self.node1).http("/metrics")
        assert code == 200, body
        return metric_value(body, DRIFT)

    def guard_status(self, node=None) -> dict:
        return ((node or self.node1).status() or {}).get("sourceValidation") or {}


def v4(pod):
    return next(ip for ip in pod.ips if ":" not in ip)


def v6(pod):
    return next(ip for ip in pod.ips if ":" in ip)


def mac_of(pod) -> str:
    return pod.ns.ip_json("link", "show", "dev", pod.ifname)[0]["address"].lower()


def port_of(pod) -> str:
    return host_veth(pod.cid, pod.ifname)


def spoof(pod, *args):
    out = pod.ns.run([sys.executable, "-m", "lab.spoof", *args], cwd=REPO, check=False)
    assert out.returncode == 0, f"lab.spoof {' '.join(args)} in {pod.ns.name}: {out.stderr}"
    return json.loads(out.stdout)


def fast_conf(node, **extra):
    return node.netconf(agentSocket=os.path.join(node.run_dir, "weftd.sock"), **extra)


class Receiver:
    """lab.spoof `listen` in a pod on PROTECTED and OPEN: the (source, port, payload) of
    every datagram, until shortly after the marker arrived (bounded in time)."""

    def __init__(self, pod, address):
        self.marker = f"marker-{next(_serial)}"
        self.address = address
        self.proc = subprocess.Popen(["ip", "netns", "exec", pod.ns.name, sys.executable, "-m", "lab.spoof",
                                      "listen", address, f"{PROTECTED},{OPEN}", str(LISTEN_SECONDS),
                                      "--until", self.marker], stdout=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline().strip()
        if line != "listening":
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"receiver in {pod.ns.name} did not start: {line!r}")

    def seen(self) -> list:
        try:
            out, _ = self.proc.communicate(timeout=LISTEN_SECONDS + 10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return [(str(ipaddress.ip_address(d["src"])), d["port"], d["payload"])
                for d in map(json.loads, out.splitlines()) if d]


def table(node):
    out = node.ns.run(["nft", "-j", "list", "table", "bridge", TABLE], check=False)
    return json.loads(out.stdout)["nftables"] if out.returncode == 0 else None


def kernel_dropped(node) -> int:
    """The table's own drop counter, read with the nft tool."""
    out = node.ns.run(["nft", "-j", "list", "counter", "bridge", TABLE, "spoofed"], check=False)
    if out.returncode != 0:
        return 0
    return sum(i["counter"]["packets"] for i in json.loads(out.stdout)["nftables"] if "counter" in i)


def set_elements(node, name) -> set:
    """The elements of one set as tuples of text ((port,) for `ports`)."""
    found = set()
    for item in table(node) or []:
        spec = item.get("set")
        if not spec or spec["name"] != name:
            continue
        for elem in spec.get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                elem = elem["elem"]["val"]
            parts = elem["concat"] if isinstance(elem, dict) and "concat" in elem else [elem]
            found.add(tuple(str(p).lower() for p in parts))
    return found


def seen_sets(node) -> dict:
    """What the table recorded as dropped: {seen set: {(port, value)}}."""
    return {item["set"]["name"]: set_elements(node, item["set"]["name"]) for item in table(node) or []
            if "set" in item and item["set"]["name"].startswith("seen")}


def rule_comments(node, chain) -> list:
    return [i["rule"].get("comment") for i in table(node) or [] if "rule" in i and i["rule"]["chain"] == chain]


def same(a, b) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return str(a).lower() == str(b).lower()


def neighbour_macs(ns, address, dev) -> list:
    return [e["lladdr"].lower() for e in ns.ip_json("neigh", "show", "to", address, "dev", dev) if e.get("lladdr")]


@pytest.fixture(scope="module")
def world(tmp_path_factory, installed):
    workdir = tmp_path_factory.mktemp("source-validation")
    cluster = Cluster(workdir / "cluster", installed)
    try:
        nodes = cluster.start_nodes(2, DUAL, NETWORK)
        made = World(cluster, nodes)
        path = workdir / "objects.yaml"
        path.write_text(yaml.safe_dump_all(objects()))
        cluster.weftctl("apply", "-f", str(path))
        node1, node2 = nodes
        for name in ("a", "b", "c"):
            made.pods[name] = node1.add_pod(conf=fast_conf(node1), name=name, pod_namespace=NS)
        made.pods["x"] = node1.add_pod(conf=fast_conf(node1, allowSpoofing=True), name="x", pod_namespace=NS)
        made.pods["b2"] = node2.add_pod(conf=fast_conf(node2), name="b2", pod_namespace=NS)
        assert all(len(p.ips) == 2 for p in made.pods.values()), {n: p.ips for n, p in made.pods.items()}
        for node in nodes:
            wait_for(lambda: ((node.status() or {}).get("policy") or {}).get("knownPods") == 10, CONVERGE,
                     what=f"{node.name} knowing the 5 pods' 10 addresses")
            wait_for(lambda: (node.status().get("policy") or {}).get("state") == "enforcing", CONVERGE,
                     what=f"{node.name} enforcing policy")
            wait_for(lambda: made.guard_status(node).get("state") == "enforcing", CONVERGE,
                     what=f"{node.name} enforcing source validation (status {made.guard_status(node)})")
        yield made
    finally:
        cluster.cleanup()


def forge_and_listen(world, victim, family, forgeries, attacker=None):
    """Send `forgeries` (lab.spoof argument lists, with {dst} for the victim's address)
    from the attacker (default c) to victim:PROTECTED, then the attacker's own datagram to
    victim:OPEN and a's marker to victim:PROTECTED; returns what the victim saw."""
    attacker = attacker or world.c
    dst = v4(victim) if family == 4 else v6(victim)
    receiver = Receiver(victim, dst)
    try:
        for args in forgeries:
            spoof(attacker, *[a.format(dst=dst, port=PROTECTED) for a in args])
        spoof(attacker, "send", dst, str(OPEN), "--payload", "own")
    finally:
        spoof(world.a, "send", dst, str(PROTECTED), "--payload", receiver.marker)
    return receiver.seen(), receiver.marker


def legit(world, attacker, family, marker):
    """What the victim must see: the attacker's own datagram and a's marker."""
    pick = v4 if family == 4 else v6
    return {(pick(attacker), OPEN, "own"), (pick(world.a), PROTECTED, marker)}


def wait_counted(world, before_metric, before_kernel, what):
    wait_for(lambda: world.spoofed_metric() > before_metric, CONVERGE,
             what=f"{SPOOFED} on node1 past {before_metric} after {what}")
    assert kernel_dropped(world.node1) > before_kernel, f"the table's counter did not grow after {what}"


def wait_journalled(world, src, reason_word, pod="c"):
    """A spoofed record in node1's journal naming sv/<pod>, its port, `src` and a reason
    containing `reason_word`; returns it."""
    port = port_of(world.pods[pod])

    def found():
        return [r for r in world.journal() if r.get("srcPod") == f"{NS}/{pod}" and same(r.get("src"), src)
                and reason_word in (r.get("reason") or "")]

    records = wait_for(found, CONVERGE, what=f"a spoofed record for {NS}/{pod} sending as {src} "
                                              f"in node1's journal (have {world.journal()})")
    record = records[-1]
    assert record["node"] == world.node1.name and record["network"] == NETWORK, record
    assert record.get("interface", record.get("port")) == port, record
    return record


# -- the baseline: the policy is what a forgery would get past ----------------------------------
@pytest.mark.parametrize("family", [4, 6])
def test_policy_admits_a_and_refuses_c_and_an_exempt_pod_gets_past_it(world, family):
    """c as itself does not reach b on PROTECTED (policy), a does; x (exempt from
    validation) forging a's address does: the bypass source validation closes."""
    pick = v4 if family == 4 else v6
    seen, marker = forge_and_listen(world, world.b, family, [["send", "{dst}", "{port}", "--payload", "c-itself"]])
    assert set(seen) == legit(world, world.c, family, marker), seen
    seen, marker = forge_and_listen(world, world.b, family,
                                    [["udp", "{dst}", "{port}", "--src", pick(world.a), "--payload", "x-as-a"]],
                                    attacker=world.x)
    assert (pick(world.a), PROTECTED, "x-as-a") in seen, seen


# -- forged addresses --------------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["b", "b2"], ids=["same-node", "across-nodes"])
@pytest.mark.parametrize("family", [4, 6])
def test_forging_another_pods_address_is_dropped_counted_and_journalled(world, victim, family):
    pick = v4 if family == 4 else v6
    forged = pick(world.a)
    before, before_kernel = world.spoofed_metric(), kernel_dropped(world.node1)
    seen, marker = forge_and_listen(world, world.pods[victim], family,
                                    [["udp", "{dst}", "{port}", "--src", forged, "--payload", "c-as-a"]])
    assert set(seen) == legit(world, world.c, family, marker), f"forged datagram arrived: {seen}"
    wait_counted(world, before, before_kernel, f"c sending as {forged}")
    wait_journalled(world, forged, f"IPv{family} source")


@pytest.mark.parametrize("victim", ["b", "b2"], ids=["same-node", "across-nodes"])
def test_forging_an_outside_address_the_policy_allows_is_dropped(world, victim):
    before, before_kernel = world.spoofed_metric(), kernel_dropped(world.node1)
    seen, marker = forge_and_listen(world, world.pods[victim], 4,
                                    [["udp", "{dst}", "{port}", "--src", OUTSIDE, "--payload", "c-as-outside"]])
    assert set(seen) == legit(world, world.c, 4, marker), f"forged datagram arrived: {seen}"
    wait_counted(world, before, before_kernel, f"c sending as {OUTSIDE}")
    wait_journalled(world, OUTSIDE, "IPv4 source")


# -- forged MACs --------------------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["b", "b2"], ids=["same-node", "across-nodes"])
def test_a_forged_ethernet_source_is_dropped(world, victim):
    """c's own addresses, another Ethernet source (written into the frame)."""
    before, before_kernel = world.spoofed_metric(), kernel_dropped(world.node1)
    seen, marker = forge_and_listen(world, world.pods[victim], 4,
                                    [["udp", "{dst}", "{port}", "--src-mac", FORGED_MAC, "--payload", "c-mac"],
                                     ["udp", "{dst}", str(OPEN), "--src-mac", FORGED_MAC, "--payload", "c-mac-open"]])
    assert set(seen) == legit(world, world.c, 4, marker), f"frame with a forged MAC arrived: {seen}"
    wait_counted(world, before, before_kernel, f"c sending from MAC {FORGED_MAC}")
    wait_journalled(world, FORGED_MAC, "MAC")


def test_sending_after_changing_the_pods_mac_is_dropped_until_it_is_changed_back(world):
    """`ip link set eth0 address ...` in c, then ordinary sockets to b and b2 (OPEN, where
    c itself is allowed): nothing arrives; with the MAC back, c's datagrams arrive."""
    c, original = world.c, mac_of(world.c)
    before, before_kernel = world.spoofed_metric(), kernel_dropped(world.node1)
    receivers = {}
    for victim in (world.b, world.b2):  # c's neighbour entries for b and the gateway first:
        spoof(c, "send", v4(victim), str(OPEN), "--payload", "warm-up")  # no ARP with the new MAC needed
    for victim in (world.b, world.b2):
        receivers[victim.ns.name] = Receiver(victim, v4(victim))
    c.ns.run(["ip", "link", "set", c.ifname, "address", CHANGED_MAC])
    try:
        for victim in (world.b, world.b2):
            spoof(c, "send", v4(victim), str(OPEN), "--payload", "changed-mac")
    finally:
        c.ns.run(["ip", "link", "set", c.ifname, "address", original])
    for victim in (world.b, world.b2):
        spoof(c, "send", v4(victim), str(OPEN), "--payload", "own")
        spoof(world.a, "send", v4(victim), str(PROTECTED), "--payload", receivers[victim.ns.name].marker)
    for victim in (world.b, world.b2):
        receiver = receivers[victim.ns.name]
        seen = receiver.seen()
        assert set(seen) == legit(world, c, 4, receiver.marker), f"{victim.ns.name} saw {seen}"
    assert mac_of(c) == original
    wait_counted(world, before, before_kernel, f"c sending with its MAC changed to {CHANGED_MAC}")
    wait_journalled(world, CHANGED_MAC, "MAC")


# -- neighbour caches -------------------------------------------------------------------------
def _know_a(world, family):
    """b and node1 hold a neighbour entry for a's address, older than the ARP locktime
    (1 s), so a reply or advertisement arriving now would override it.  IPv6: b learns
    a from the solicitation a sends before its datagram to b (b resolving a itself
    would need a's advertisement to reach b, which b's ingress isolation drops: see
    the module's note on NetworkPolicy and neighbour discovery)."""
    a_addr, a_mac = (v4(world.a) if family == 4 else v6(world.a)), mac_of(world.a)
    if family == 4:
        assert world.b.ping(a_addr), f"b cannot reach a at {a_addr}"
    else:
        spoof(world.a, "send", v6(world.b), str(OPEN), "--payload", "hello")
    flag = ["-6"] if family == 6 else []
    world.node1.ns.run(["ping", *flag, "-c1", "-W2", a_addr])
    wait_for(lambda: neighbour_macs(world.b.ns, a_addr, "eth0") == [a_mac], 5,
             what=f"b's neighbour entry for a ({a_addr}) (b has {world.b.ns.ip_json('neigh')})")
    assert neighbour_macs(world.node1.ns, a_addr, "cbr0") == [a_mac]
    time.sleep(1.5)
    return a_addr


def _forget_a(world, a_addr):
    world.b.ns.run(["ip", "neigh", "flush", "to", a_addr, "dev", "eth0"], check=False)
    world.node1.ns.run(["ip", "neigh", "flush", "to", a_addr, "dev", "cbr0"], check=False)


def test_an_arp_reply_claiming_another_pods_address_poisons_nothing(world):
    a_addr = _know_a(world, 4)
    a_mac, gateway = mac_of(world.a), world.b.result["ips"][0]["gateway"]
    before, before_kernel = world.spoofed_metric(), kernel_dropped(world.node1)
    spoof(world.c, "arp-reply", v4(world.b), "--claim", a_addr)   # to b
    spoof(world.c, "arp-reply", gateway, "--claim", a_addr)       # to the node
    spoof(world.c, "arp-reply", v4(world.b), "--claim", a_addr, "--broadcast")  # gratuitous, to all
    time.sleep(0.5)
    assert neighbour_macs(world.b.ns, a_addr, "eth0") == [a_mac], "b's entry for a was poisoned"
    assert neighbour_macs(world.node1.ns, a_addr, "cbr0") == [a_mac], "node1's entry for a was poisoned"
    assert world.b.ping(a_addr)
    wait_counted(world, before, before_kernel, f"c's ARP replies claiming {a_addr}")
    wait_journalled(world, a_addr, "ARP")

    # the control: the exempt pod's identical replies do poison both entries
    _know_a(world, 4)
    try:
        spoof(world.x, "arp-reply", v4(world.b), "--claim", a_addr)
        spoof(world.x, "arp-reply", gateway, "--claim", a_addr)
        wait_for(lambda: neighbour_macs(world.b.ns, a_addr, "eth0") == [mac_of(world.x)], 5,
                 what="the exempt pod's ARP reply reaching b's cache (the oracle's control)")
        wait_for(lambda: neighbour_macs(world.node1.ns, a_addr, "cbr0") == [mac_of(world.x)], 5,
                 what="the exempt pod's ARP reply reaching node1's cache (the oracle's control)")
    finally:
        _forget_a(world, a_addr)
    assert world.b.ping(a_addr)


def test_a_neighbour_advertisement_for_another_pods_address_poisons_nothing(world):
    a_addr = _know_a(world, 6)
    a_mac = mac_of(world.a)
    before, before_kernel = world.spoofed_metric(), kernel_dropped(world.node1)
    spoof(world.c, "na", "--claim", a_addr)                        # from c's link-local, to ff02::1
    spoof(world.c, "na", "--claim", a_addr, "--dst", v6(world.b))  # unicast to b
    time.sleep(0.5)
    assert neighbour_macs(world.b.ns, a_addr, "eth0") == [a_mac], "b's entry for a was poisoned"
    assert neighbour_macs(world.node1.ns, a_addr, "cbr0") == [a_mac], "node1's entry for a was poisoned"
    wait_counted(world, before, before_kernel, f"c's neighbour advertisements claiming {a_addr}")

    # the control: the exempt pod's identical advertisement does poison both entries
    _know_a(world, 6)
    try:
        spoof(world.x, "na", "--claim", a_addr)
        wait_for(lambda: neighbour_macs(world.b.ns, a_addr, "eth0") == [mac_of(world.x)], 5,
                 what="the exempt pod's advertisement reaching b's cache (the oracle's control)")
        wait_for(lambda: neighbour_macs(world.node1.ns, a_addr, "cbr0") == [mac_of(world.x)], 5,
                 what="the exempt pod's advertisement reaching node1's cache (the oracle's control)")
    finally:
        _forget_a(world, a_addr)
    # the journal says which address c claimed (the advertisement's target), not only
    # the link-local address it came from
    wait_journalled(world, a_addr, "neighbour advertisement")


# -- status and the table as the kernel holds it ------------------------------------------------
def test_status_and_table_describe_the_validated_pods(world):
    before = world.guard_status().get("spoofedPackets", 0)
    seen, marker = forge_and_listen(world, world.b, 4, [["udp", "{dst}", "{port}", "--src", OUTSIDE,
                                                         "--payload", "c-as-outside"]])
    assert set(seen) == legit(world, world.c, 4, marker), seen
    wait_for(lambda: world.guard_status().get("spoofedPackets", 0) > before, CONVERGE,
             what=f"sourceValidation.spoofedPackets past {before}")
    status = world.guard_status()
    assert status.get("table") == f"bridge {TABLE}" and status.get("state") == "enforcing", status
    assert status.get("ports") == 3 and status.get("exempt") == 1, status
    assert status.get("exemptPods") == [f"{NS}/x"], status
    assert world.guard_status(world.node2).get("ports") == 1
    validated = [world.a, world.b, world.c]
    assert set_elements(world.node1, "ports") == {(port_of(p),) for p in validated}
    assert set_elements(world.node1, "mac") == {(port_of(p), mac_of(p)) for p in validated}
    assert {(p, str(ipaddress.ip_address(a))) for p, a in set_elements(world.node1, "addr4")} == \
        {(port_of(p), v4(p)) for p in validated}
    assert {(p, str(ipaddress.ip_address(a))) for p, a in set_elements(world.node1, "addr6")} == \
        {(port_of(p), str(ipaddress.ip_address(v6(p)))) for p in validated}
    assert set_elements(world.node2, "ports") == {(port_of(world.b2),)}


# -- drift: weftd puts back what was taken away -------------------------------------------------
def _drift_repaired(world, before_status, before_metric, what):
    wait_for(lambda: world.guard_status().get("driftRepaired", 0) > before_status, CONVERGE,
             what=f"sourceValidation.driftRepaired past {before_status} after {what}")
    assert world.drift_metric() > before_metric, f"{DRIFT} did not grow after {what}"


def _still_enforced(world):
    seen, marker = forge_and_listen(world, world.b, 4, [["udp", "{dst}", "{port}", "--src", v4(world.a),
                                                         "--payload", "c-as-a-after-repair"]])
    assert set(seen) == legit(world, world.c, 4, marker), seen


def test_a_deleted_element_is_put_back(world):
    c, node = world.c, world.node1
    element = (port_of(c), v4(c))
    assert element in set_elements(node, "addr4")
    before_status, before_metric = world.guard_status().get("driftRepaired", 0), world.drift_metric()
    node.ns.run(["nft", "delete", "element", "bridge", TABLE, "addr4", f"{{ {element[0]} . {element[1]} }}"])
    assert element not in set_elements(node, "addr4")
    wait_for(lambda: element in set_elements(node, "addr4"), CONVERGE, what=f"addr4 {element} put back")
    _drift_repaired(world, before_status, before_metric, "a deleted addr4 element")
    _still_enforced(world)


def test_an_element_no_pod_owns_is_taken_out(world):
    """Someone allows c to send as a: weftd removes the element (no record wants it)."""
    c, node = world.c, world.node1
    element = (port_of(c), v4(world.a))
    before_status, before_metric = world.guard_status().get("driftRepaired", 0), world.drift_metric()
    node.ns.run(["nft", "add", "element", "bridge", TABLE, "addr4", f"{{ {element[0]} . {element[1]} }}"])
    wait_for(lambda: element not in set_elements(node, "addr4"), CONVERGE, what=f"addr4 {element} taken out")
    _drift_repaired(world, before_status, before_metric, "an added addr4 element")
    _still_enforced(world)


def test_a_deleted_rule_is_put_back(world):
    node = world.node1
    wanted = rule_comments(node, "ipv4")
    (rule,) = [i["rule"] for i in table(node) if "rule" in i and i["rule"]["chain"] == "ipv4"
               and "drop" in json.dumps(i["rule"]["expr"])]
    before_status, before_metric = world.guard_status().get("driftRepaired", 0), world.drift_metric()
    node.ns.run(["nft", "delete", "rule", "bridge", TABLE, "ipv4", "handle", str(rule["handle"])])
    assert rule_comments(node, "ipv4") != wanted
    wait_for(lambda: rule_comments(node, "ipv4") == wanted, CONVERGE, what="the deleted drop rule put back")
    _drift_repaired(world, before_status, before_metric, "a deleted rule")
    _still_enforced(world)


def test_a_deleted_table_is_put_back_with_every_pods_elements(world):
    node = world.node1
    ports_before, addr4_before = set_elements(node, "ports"), set_elements(node, "addr4")
    before_status, before_metric = world.guard_status().get("driftRepaired", 0), world.drift_metric()
    node.ns.run(["nft", "delete", "table", "bridge", TABLE])
    assert table(node) is None
    wait_for(lambda: table(node) is not None and set_elements(node, "ports") == ports_before, CONVERGE,
             what=f"bridge {TABLE} back with every validated port")
    assert set_elements(node, "addr4") == addr4_before
    _drift_repaired(world, before_status, before_metric, "a deleted table")
    _still_enforced(world)
    assert world.guard_status().get("state") == "enforcing"
