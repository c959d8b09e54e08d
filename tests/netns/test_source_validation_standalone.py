"""Source validation with the plugin alone (issue 22): no weftd, static `ipam.ranges`.

The installed `weft` runs inside a node namespace of the test's own, as a runtime
calls it.  Oracles independent of weft's code: the node's table read back with
`nft -j list table bridge weft_source_<network>` (the `nft` tool, not weft's
libnftables binding), links and neighbour entries with `ip -j`, the port record
files, and traffic: a UDP receiver in a pod (lab/spoof.py `listen`) recording the
source of every datagram, frames forged with lab/spoof.py from another pod.
"""

import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest

from cni_plugin.cni.errors import IO_FAILURE
from lab.attachment import host_veth
from lab.cluster import REPO

pytestmark = pytest.mark.root

NETWORK = "weftnet"  # tests/netns/conftest.py's netconf name
TABLE = "weft_source_weftnet"
SUBNET4, SUBNET6 = "10.244.1.0/24", "fd10:244:1::/64"
GATEWAY4 = "10.244.1.1"
FORGED_OUTSIDE = "192.0.2.7"
FORGED_MAC = "02:00:5e:00:53:42"  # documentation range: nobody's
LISTEN_SECONDS = 15


# -- helpers ------------------------------------------------------------------------------
def conf(weft, **overrides):
    """Dual-stack static ranges; the port records beside a subnet file in the test's own
    directory (the subnet file itself is never read: the ranges are static)."""
    return weft.conf(subnetFile=f"{weft.tmp}/run/{NETWORK}.env",
                     ipam={"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
                           "ranges": [[{"subnet": SUBNET4}], [{"subnet": SUBNET6}]]},
                     **overrides)


def ports_dir(weft) -> str:
    return f"{weft.tmp}/run/{NETWORK}.ports"


def table(node):
    """The table as nft JSON objects, None when there is none."""
    out = node.run(["nft", "-j", "list", "table", "bridge", TABLE], check=False)
    return json.loads(out.stdout)["nftables"] if out.returncode == 0 else None


def _value(part):
    if isinstance(part, dict) and "prefix" in part:
        return f"{part['prefix']['addr']}/{part['prefix']['len']}"
    return part


def elements(objects) -> dict:
    """{set name: {element}}: a one-field element as its value, a concatenation as a
    tuple of its values (integers stay integers)."""
    out = {}
    for item in objects or []:
        spec = item.get("set")
        if not spec:
            continue
        found = out.setdefault(spec["name"], set())
        for elem in spec.get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                elem = elem["elem"]["val"]
            if isinstance(elem, dict) and "concat" in elem:
                found.add(tuple(_value(p) for p in elem["concat"]))
            else:
                found.add(_value(elem))
    return out


def _as_int(value) -> int:
    return value if isinstance(value, int) else int(str(value), 0)


def port_elements(node, port: str) -> dict:
    """{set name: {element}} of one port's elements in the port sets (seen_* excluded)."""
    out = {}
    for name, values in elements(table(node)).items():
        if name.startswith("seen"):
            continue
        mine = {v for v in values if v == port or (isinstance(v, tuple) and v[0] == port)}
        if mine:
            out[name] = mine
    return out


def expected_elements(port: str, mac: str, ips) -> dict:
    v4 = [ip for ip in ips if ip.version == 4]
    v6 = [ip for ip in ips if ip.version == 6]
    return {"ports": {port}, "mac": {(port, mac)}, "addr4": {(port, str(ip)) for ip in v4},
            "addr6": {(port, str(ip)) for ip in v6}, "nd6": {(port, int(ip)) for ip in v6}}


def normalised(held: dict) -> dict:
    """Listed elements in expected_elements()' shape (nd6 integers as int, addresses
    in their canonical text)."""
    out = {}
    for name, values in held.items():
        if name == "nd6":
            out[name] = {(v[0], _as_int(v[1])) for v in values}
        elif name in ("addr4", "addr6"):
            out[name] = {(v[0], str(ipaddress.ip_address(v[1]))) for v in values}
        elif name == "mac":
            out[name] = {(v[0], v[1].lower()) for v in values}
        else:
            out[name] = set(values)
    return out


def counter(node) -> int:
    out = node.run(["nft", "-j", "list", "counter", "bridge", TABLE, "spoofed"], check=False)
    if out.returncode != 0:
        return 0
    return sum(item["counter"]["packets"] for item in json.loads(out.stdout)["nftables"] if "counter" in item)


def seen(node) -> set:
    """(set, port, value) of every dropped source the table recorded in its seen_* sets."""
    return {(name, v[0], str(v[1]).lower()) for name, values in elements(table(node)).items()
            if name.startswith("seen") for v in values if isinstance(v, tuple)}


class Attached:
    def __init__(self, ns, cid, result):
        self.ns, self.cid, self.result = ns, cid, result
        self.ips = [ipaddress.ip_interface(ip["address"]).ip for ip in result["ips"]]
        self.v4 = str(next(ip for ip in self.ips if ip.version == 4))
        self.v6 = str(next(ip for ip in self.ips if ip.version == 6))
        self.port = host_veth(cid)
        self.mac = ns.ip_json("link", "show", "dev", "eth0")[0]["address"].lower()

    def spoof(self, *args, check=True):
        out = self.ns.run([sys.executable, "-m", "lab.spoof", *args], cwd=REPO, check=False)
        if check:
            assert out.returncode == 0, f"lab.spoof {' '.join(args)}: {out.stderr}"
        return out


def attach(weft, pods, cid, netconf):
    ns = pods()
    out = weft("ADD", netconf, ns, cid=cid)
    assert out.code == 0, out
    return Attached(ns, cid, out.json)


class Receiver:
    """lab.spoof listen in a pod: every datagram's (source, payload), bounded in time,
    ending shortly after the marker datagram arrived."""

    def __init__(self, pod, address, port, marker):
        self.marker = marker
        self.proc = subprocess.Popen(["ip", "netns", "exec", pod.ns.name, sys.executable, "-m", "lab.spoof",
                                      "listen", address, str(port), str(LISTEN_SECONDS), "--until", marker],
                                     stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert self.proc.stdout.readline().strip() == "listening"

    def seen(self) -> list:
        try:
            out, _ = self.proc.communicate(timeout=LISTEN_SECONDS + 10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return [json.loads(line) for line in out.splitlines() if line.strip()]


# -- the tests ------------------------------------------------------------------------------
WATCHER = r"""
import json, select, sys, time
sys.path.insert(0, sys.argv[1])
from pyroute2 import IPRoute
from lab import spoof
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
forged, gateway, deadline = sys.argv[2], sys.argv[3], time.monotonic() + float(sys.argv[4])
burst, interval = float(sys.argv[5]), 0.005
with IPRoute() as ipr:
    ipr.bind()
    print("ready", flush=True)
    while time.monotonic() < deadline:
        if not select.select([ipr.fileno()], [], [], 0.2)[0]:
            continue
        for msg in ipr.get():
            if msg.get("event") != "RTM_NEWLINK" or msg.get_attr("IFLA_IFNAME") != "eth0":
                continue
            flags = msg["flags"]
            if flags & IFF_UP and flags & IFF_LOWER_UP:
                mac = msg.get_attr("IFLA_ADDRESS")
                frame = spoof.udp_frame(mac, "ff:ff:ff:ff:ff:ff", forged, gateway, 40000, 9, b"first frames")
                sent, until = 0, time.monotonic() + burst
                with spoof.socket.socket(spoof.socket.AF_PACKET, spoof.socket.SOCK_RAW) as sock:
                    sock.bind(("eth0", 0))
                    while time.monotonic() < until:
                        sock.send(frame)
                        sent += 1
                        time.sleep(interval)
                print(json.dumps({"mac": mac, "flags": flags, "sent": sent}), flush=True)
                sys.exit(0)
print("eth0 never came up", flush=True)
sys.exit(1)
"""
EARLY_FORGED = "198.51.100.9"


def past_validation_counter(node, port: str) -> str:
    """An oracle table of the test's own in the node: a bridge prerouting chain after
    weft's (priority 0 > -400) counting the forged frames of `port` that got through.
    Returns its name."""
    name = "oracle_after_validation"
    node.run(["nft", "-f", "-"], input=f"""
table bridge {name} {{
    chain prerouting {{
        type filter hook prerouting priority 0; policy accept;
        iifname "{port}" ether type ip ip saddr {EARLY_FORGED} counter
    }}
}}
""")
    return name


def passed(node, name: str) -> int:
    out = json.loads(node.run(["nft", "-j", "list", "table", "bridge", name]).stdout)["nftables"]
    return sum(expr["counter"]["packets"] for item in out if "rule" in item
               for expr in item["rule"]["expr"] if isinstance(expr, dict) and "counter" in expr)


def test_add_validates_the_pod_before_its_interface_is_up(weft, node, pods):
    """A watcher in the pod's namespace sends forged frames from the instant eth0 is up
    with a carrier (the first netlink event saying so) for a second: the bridge drops
    the first ones while its port is not yet forwarding, validation the rest; none
    gets past validation (an nft counter of the test's own, after weft's chain, sees
    none), so the port's elements were in before the pod could send anything."""
    netconf = conf(weft)
    pod = pods()
    port = host_veth("early")
    oracle = past_validation_counter(node, port)
    watcher = subprocess.Popen(["ip", "netns", "exec", pod.name, sys.executable, "-c", WATCHER, REPO,
                                EARLY_FORGED, GATEWAY4, "30", "1.0"], stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout.readline().strip() == "ready"
        out = weft("ADD", netconf, pod, cid="early")
        assert out.code == 0, out
        said = watcher.stdout.readline().strip()
        assert watcher.wait(timeout=30) == 0, said
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    first = json.loads(said)
    assert first["mac"].lower() == out.json["interfaces"][2]["mac"].lower()
    assert passed(node, oracle) == 0, f"forged frames got past validation ({first['sent']} sent)"
    assert counter(node) >= 1, f"none of {first['sent']} forged frames reached the bridge's hook"
    assert ("seen4", port, EARLY_FORGED) in seen(node), json.dumps(table(node))
    ips = [ipaddress.ip_interface(ip["address"]).ip for ip in out.json["ips"]]
    assert normalised(port_elements(node, port)) == expected_elements(port, first["mac"].lower(), ips)


def test_the_early_frame_oracle_sees_a_pod_that_is_not_validated(weft, node, pods):
    """The control of the test above: with `allowSpoofing: true` the port gets a record
    (validated: false) but no elements, and the same forged frames reach the oracle."""
    netconf = conf(weft, allowSpoofing=True)
    pod = pods()
    port = host_veth("exempt")
    oracle = past_validation_counter(node, port)
    watcher = subprocess.Popen(["ip", "netns", "exec", pod.name, sys.executable, "-c", WATCHER, REPO,
                                EARLY_FORGED, GATEWAY4, "30", "1.0"], stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout.readline().strip() == "ready"
        out = weft("ADD", netconf, pod, cid="exempt")
        assert out.code == 0, out
        said = watcher.stdout.readline().strip()
        assert watcher.wait(timeout=30) == 0, said
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert passed(node, oracle) > 0, f"the oracle counted none of the {json.loads(said)['sent']} frames sent"
    assert port_elements(node, port) == {}
    record = json.loads(open(os.path.join(ports_dir(weft), port)).read())
    assert record["validated"] is False and record["port"] == port
    assert weft("DEL", netconf, pod, cid="exempt").code == 0
    assert not os.path.exists(os.path.join(ports_dir(weft), port))


def test_add_programs_the_port_and_del_removes_it(weft, node, pods):
    netconf = conf(weft)
    a = attach(weft, pods, "ca", netconf)
    b = attach(weft, pods, "cb", netconf)
    objects = table(node)
    assert objects is not None, f"no table bridge {TABLE} after a standalone ADD"
    chains = {o["chain"]["name"]: o["chain"] for o in objects if "chain" in o}
    base = chains.get("prerouting")
    assert base and (base.get("type"), base.get("hook")) == ("filter", "prerouting"), chains
    for pod in (a, b):
        assert normalised(port_elements(node, pod.port)) == expected_elements(pod.port, pod.mac, pod.ips)
        record = json.loads(open(os.path.join(ports_dir(weft), pod.port)).read())
        assert record["port"] == pod.port and record["mac"] == pod.mac and record["validated"] is True
        assert {ipaddress.ip_address(x) for x in record["addresses"]} == set(pod.ips)
    assert weft("CHECK", {**netconf, "prevResult": a.result}, a.ns, cid="ca").code == 0

    for _ in range(2):  # DEL, and DEL again when everything is gone
        deleted = weft("DEL", netconf, a.ns, cid="ca")
        assert deleted.code == 0, deleted
        assert port_elements(node, a.port) == {}
        assert not os.path.exists(os.path.join(ports_dir(weft), a.port))
    # the other pod keeps its validation
    assert normalised(port_elements(node, b.port)) == expected_elements(b.port, b.mac, b.ips)
    assert os.path.exists(os.path.join(ports_dir(weft), b.port))


def test_forged_traffic_is_dropped_and_own_traffic_passes(weft, node, pods):
    """Pod c forges pod a's addresses (IPv4, IPv6), an outside address and another MAC
    towards pod b, and claims a's addresses in an ARP reply and a neighbour
    advertisement: b receives none of it, its neighbour entries for a stay a's, and
    c's own datagram arrives."""
    netconf = conf(weft)
    a, b, c = (attach(weft, pods, cid, netconf) for cid in ("sa", "sb", "sc"))
    # b knows a (both families) before the claims, so a successful claim would show
    assert b.ns.run(["ping", "-c1", "-W2", a.v4], check=False).returncode == 0
    assert b.ns.run(["ping", "-6", "-c1", "-W2", a.v6], check=False).returncode == 0
    before = counter(node)
    time.sleep(1.2)  # past the ARP locktime (1 s): a reply now would override the entry

    for family, dst, victim_src in ((4, b.v4, a.v4), (6, b.v6, a.v6)):
        marker = f"legit-{family}"
        receiver = Receiver(b, dst, 7001, marker)
        c.spoof("udp", dst, "7001", "--src", victim_src, "--payload", f"forged-as-a-{family}")
        if family == 4:
            c.spoof("udp", dst, "7001", "--src", FORGED_OUTSIDE, "--payload", "forged-outside")
        c.spoof("udp", dst, "7001", "--src-mac", FORGED_MAC, "--payload", f"forged-mac-{family}")
        c.spoof("send", dst, "7001", "--payload", marker)
        got = receiver.seen()
        assert [(g["src"], g["payload"]) for g in got] == [(c.v4 if family == 4 else c.v6, marker)], got

    c.spoof("arp-reply", b.v4, "--claim", a.v4)
    c.spoof("arp-reply", GATEWAY4, "--claim", a.v4)
    c.spoof("na", "--claim", a.v6)
    time.sleep(0.3)
    for address in (a.v4, a.v6):
        entries = b.ns.ip_json("neigh", "show", "to", address, "dev", "eth0")
        assert [e.get("lladdr", "").lower() for e in entries if e.get("lladdr")] in ([], [a.mac]), entries
        host = node.ip_json("neigh", "show", "to", address, "dev", "cbr0")
        assert all(e.get("lladdr", "").lower() == a.mac for e in host if e.get("lladdr")), host

    assert counter(node) >= before + 6
    recorded = seen(node)
    for entry in (("seen4", c.port, a.v4), ("seen4", c.port, FORGED_OUTSIDE), ("seen_mac", c.port, FORGED_MAC),
                  ("seen_arp", c.port, a.v4), ("seen6", c.port, str(ipaddress.ip_address(a.v6)))):
        assert entry in recorded, (entry, recorded)
    assert not any(port in (a.port, b.port) for _, port, _ in recorded), recorded

    # the control: a pod of the same bridge with allowSpoofing: true does the same and
    # succeeds, so the receiver and the neighbour entries above would have shown it
    x = attach(weft, pods, "sx", conf(weft, allowSpoofing=True))
    assert b.ns.run(["ping", "-c1", "-W2", a.v4], check=False).returncode == 0
    assert b.ns.run(["ping", "-6", "-c1", "-W2", a.v6], check=False).returncode == 0
    time.sleep(1.2)
    receiver = Receiver(b, b.v4, 7001, "legit-x")
    x.spoof("udp", b.v4, "7001", "--src", a.v4, "--payload", "forged-by-x")
    x.spoof("send", b.v4, "7001", "--payload", "legit-x")
    got = receiver.seen()
    assert [(g["src"], g["payload"]) for g in got] == [(a.v4, "forged-by-x"), (x.v4, "legit-x")], got
    x.spoof("arp-reply", b.v4, "--claim", a.v4)
    x.spoof("na", "--claim", a.v6)
    time.sleep(0.3)
    for address in (a.v4, a.v6):
        entries = b.ns.ip_json("neigh", "show", "to", address, "dev", "eth0")
        assert [e.get("lladdr", "").lower() for e in entries] == [x.mac], (address, entries)


def test_a_changed_mac_is_dropped_until_it_is_changed_back(weft, node, pods):
    netconf = conf(weft)
    b, c = (attach(weft, pods, cid, netconf) for cid in ("mb", "mc"))
    c.spoof("send", b.v4, "7002", "--payload", "resolve")  # c's entry for b: no ARP needed below
    receiver = Receiver(b, b.v4, 7002, "back")
    c.ns.run(["ip", "link", "set", "eth0", "address", FORGED_MAC])
    try:
        c.spoof("send", b.v4, "7002", "--payload", "changed")
    finally:
        c.ns.run(["ip", "link", "set", "eth0", "address", c.mac])
    c.spoof("send", b.v4, "7002", "--payload", "back")
    got = receiver.seen()
    assert [(g["src"], g["payload"]) for g in got] == [(c.v4, "back")], got
    assert ("seen_mac", c.port, FORGED_MAC) in seen(node)


def test_failed_add_leaves_no_validation_behind(weft, node, pods):
    """A failure after the port was validated (a route whose gateway is unreachable
    fails inside the container) rolls its elements and record back; the other pod's
    stay."""
    netconf = conf(weft)
    kept = attach(weft, pods, "kept", netconf)
    failing = {**netconf, "ipam": {**netconf["ipam"], "routes": [{"dst": "10.50.0.0/16", "gw": "192.0.2.1"}]}}
    out = weft("ADD", failing, pods(), cid="broken")
    assert out.code == 1 and out.json["code"] == IO_FAILURE, out
    port = host_veth("broken")
    assert port_elements(node, port) == {}
    assert not os.path.exists(os.path.join(ports_dir(weft), port))
    assert port not in {link["ifname"] for link in node.ip_json("link", "show")}
    assert weft.ipam_files() == sorted(str(ip) for ip in kept.ips)
    assert normalised(port_elements(node, kept.port)) == expected_elements(kept.port, kept.mac, kept.ips)


def test_add_that_cannot_write_its_port_record_fails_and_leaves_nothing(weft, node, pods):
    netconf = conf(weft)
    os.makedirs(f"{weft.tmp}/run", exist_ok=True)
    with open(ports_dir(weft), "w") as handle:  # a file where the records directory goes
        handle.write("not a directory\n")
    pod = pods()
    out = weft("ADD", netconf, pod, cid="norecord")
    assert out.code == 1 and out.json["code"] == IO_FAILURE, out
    assert ports_dir(weft) in out.json["msg"], out
    port = host_veth("norecord")
    assert port_elements(node, port) == {}
    assert port not in {link["ifname"] for link in node.ip_json("link", "show")}
    assert [link["ifname"] for link in pod.ip_json("link", "show")] == ["lo"]
    assert weft.ipam_files() == []


# -- no agent repairs the table: the next ADD (and CHECK) do what they can -------------------------
def _ipv4_drop_rule(node):
    (rule,) = [i["rule"] for i in table(node) if "rule" in i and i["rule"]["chain"] == "ipv4"
               and "drop" in json.dumps(i["rule"]["expr"])]
    return rule


def _comments(node, chain):
    return [i["rule"].get("comment") for i in table(node) if "rule" in i and i["rule"]["chain"] == chain]


def test_a_standalone_add_rebuilds_a_damaged_table_keeping_the_pods_already_validated(weft, node, pods):
    netconf = conf(weft)
    a = attach(weft, pods, "da", netconf)
    wanted = _comments(node, "ipv4")
    node.run(["nft", "delete", "rule", "bridge", TABLE, "ipv4", "handle", str(_ipv4_drop_rule(node)["handle"])])
    assert _comments(node, "ipv4") != wanted
    b = attach(weft, pods, "db", netconf)
    assert _comments(node, "ipv4") == wanted
    for pod in (a, b):
        assert normalised(port_elements(node, pod.port)) == expected_elements(pod.port, pod.mac, pod.ips)
    before = counter(node)
    a.spoof("udp", b.v4, "7001", "--src", FORGED_OUTSIDE, "--payload", "after-rebuild")
    assert counter(node) > before and ("seen4", a.port, FORGED_OUTSIDE) in seen(node)


def test_a_deleted_table_is_reported_by_check_and_rebuilt_from_the_records_by_the_next_add(weft, node, pods):
    """Standalone, the port records beside the subnet file are the only other copy of
    what the kernel held: CHECK names the missing table, and the next ADD brings back
    every recorded pod's validation, not only its own."""
    netconf = conf(weft)
    a = attach(weft, pods, "ta", netconf)
    node.run(["nft", "delete", "table", "bridge", TABLE])
    checked = weft("CHECK", {**netconf, "prevResult": a.result}, a.ns, cid="ta")
    assert checked.code == 1 and checked.json["code"] == 104 and TABLE in checked.json["msg"], checked
    b = attach(weft, pods, "tb", netconf)
    assert normalised(port_elements(node, b.port)) == expected_elements(b.port, b.mac, b.ips)
    assert normalised(port_elements(node, a.port)) == expected_elements(a.port, a.mac, a.ips), \
        "pod a, whose record is still there, is no longer validated after the table was rebuilt"


def test_a_standalone_gc_restores_an_element_a_pod_lost_and_removes_one_no_record_wants(weft, node, pods):
    """A standalone ADD checks only the table's shape (listing every pod's elements on
    each ADD would grow with the pods); the backstop for element drift is GC, which
    makes the elements exactly what the port records say.  Without it the element
    deleted by hand stays gone, and the pod can no longer send as itself."""
    netconf = conf(weft)
    a = attach(weft, pods, "ga", netconf)
    b = attach(weft, pods, "gb", netconf)
    node.run(["nft", "delete", "element", "bridge", TABLE, "addr4", f"{{ {a.port} . {a.v4} }}"])
    node.run(["nft", "add", "element", "bridge", TABLE, "addr4", f"{{ {b.port} . {FORGED_OUTSIDE} }}"])
    checked = weft("CHECK", {**netconf, "prevResult": a.result}, a.ns, cid="ga")
    assert checked.code == 1 and checked.json["code"] == 104 and "set addr4" in checked.json["msg"], checked
    c = attach(weft, pods, "gc", netconf)  # an ADD meanwhile finds the shape whole
    assert normalised(port_elements(node, c.port)) == expected_elements(c.port, c.mac, c.ips)
    gc = weft("GC", {**conf(weft, cniVersion="1.1.0"), "cni.dev/valid-attachments": [
        {"containerID": pod, "ifname": "eth0"} for pod in ("ga", "gb", "gc")]})
    assert gc.code == 0, gc
    for pod in (a, b, c):
        assert normalised(port_elements(node, pod.port)) == expected_elements(pod.port, pod.mac, pod.ips), pod.cid
    checked = weft("CHECK", {**netconf, "prevResult": a.result}, a.ns, cid="ga")
    assert checked.code == 0, checked
