"""Source validation (issue 22, "pods speak only as themselves") breaks nothing legitimate,
and its opt-out lets a router pod forward for others.

Real etcd, real weftd, pods attached by the installed `weft` inside node namespaces.
Every verdict is observed: the source address a server saw, replies that came back,
neighbour caches and address flags read back with `ip -j`, the bridge table's own
counters read with the `nft` tool (an oracle apart from weft's libnftables binding),
beside weftd's `weft_spoofed_packets_total`.

What validation drops is tests/cluster/test_source_validation.py's business; these make
only frames a pod legitimately sends (the gratuitous announcements with lab/spoof.py's
frame builders), except the validated router pod of the opt-out test.
"""

import ipaddress
import json
import os
import subprocess
import sys
import time


from lab.attachment import host_veth
from lab.cli_helpers import metric_value
from lab.cluster import ETCD_IP, REPO, Pod, serve_tcp, wait_for
from lab.cni import invoke, run_chain
from lab.namespaces import Namespace

DUAL = {"Network": "10.246.0.0/16", "EnableIPv6": True, "IPv6Network": "fd00:246::/48",
        "Backend": {"Type": "vxlan", "VNI": 1}}
NETWORK = "weft"
TABLE = f"weft_source_{NETWORK}"
SPOOFED = f'weft_spoofed_packets_total{{network="{NETWORK}"}}'
REQUESTED_MAC = "02:42:ac:11:00:99"
BOGUS_MAC = "02:00:5e:00:53:99"  # locally administered: no interface here has it


# -- helpers -----------------------------------------------------------------------------

def start(cluster, count, config=DUAL):
    return cluster.start_nodes(count, config, NETWORK)


def conf(node, **extra):
    """The weft entry of conf/10-weft.conflist on this node: served by weftd (the
    agentSocket fast path), hairpin mode on."""
    return node.netconf(agentSocket=os.path.join(node.run_dir, "weftd.sock"), hairpinMode=True, **extra)


def add(node, **kwargs):
    return node.add_pod(conf=conf(node, **kwargs.pop("extra", {})), **kwargs)


def v4(pod):
    return next(ip for ip in pod.ips if ":" not in ip)


def v6(pod):
    return next(ip for ip in pod.ips if ":" in ip)


def same_address(a, b) -> bool:
    return a is not None and b is not None and ipaddress.ip_address(a) == ipaddress.ip_address(b)


def pod_mac(pod) -> str:
    return pod.ns.ip_json("link", "show", pod.ifname)[0]["address"]


def guard_table(node, network=NETWORK):
    """The node's `bridge weft_source_<network>` as nft JSON objects (None when absent)."""
    out = node.ns.run(["nft", "-j", "list", "table", "bridge", f"weft_source_{network}"], check=False)
    return json.loads(out.stdout)["nftables"] if out.returncode == 0 else None


def dropped(node, network=NETWORK) -> int:
    """Packets the table's named counter `spoofed` counted (every drop rule adds to it)."""
    return sum(item["counter"].get("packets", 0) for item in guard_table(node, network) or []
               if isinstance(item.get("counter"), dict) and item["counter"].get("name") == "spoofed")


def recorded(node, network=NETWORK) -> list:
    """What the table recorded as dropped: the elements of its seen_* sets (port . value)."""
    found = []
    for item in guard_table(node, network) or []:
        sets = item.get("set") or {}
        if sets.get("name", "").startswith("seen"):
            found += [f"{sets['name']}: {json.dumps(e)}" for e in sets.get("elem", [])]
    return sorted(found)


def spoofed(node, network=NETWORK) -> float:
    code, body = node.http("/metrics")
    assert code == 200, body
    return metric_value(body, f'weft_spoofed_packets_total{{network="{network}"}}')


def counts(nodes, networks=(NETWORK,)) -> dict:
    """{(node, network): (weftd's metric, the kernel's counter, the kernel's records)}."""
    return {(node.name, network): (spoofed(node, network), dropped(node, network), recorded(node, network))
            for node in nodes for network in networks}


def assert_validating(node, pods, network=NETWORK):
    """Validation is on for the node and holds an element for each pod's host veth."""
    table = wait_for(lambda: guard_table(node, network), 20, what=f"bridge weft_source_{network} on {node.name}")
    text = json.dumps(table)
    for pod in pods:
        assert host_veth(pod.cid, pod.ifname) in text, \
            f"{pod.ns.name}'s host veth {host_veth(pod.cid, pod.ifname)} has no element in weft_source_{network}"


def assert_nothing_spoofed(nodes, networks=(NETWORK,)):
    """Nothing was ever dropped on these nodes' networks, the pods' bring-up (DAD, MLD,
    router solicitations) included: weftd's metric, the kernel's counter and records."""
    found = counts(nodes, networks)
    assert all(value == (0, 0, []) for value in found.values()), \
        f"legitimate traffic was dropped as spoofed (metric, nft counter, nft records): {found}"


def neigh(ns, address, dev):
    """The neighbour entry for `address` on `dev` in `ns` (ip -j), or None."""
    entries = ns.ip_json("neigh", "show", address, "dev", dev)
    return entries[0] if entries else None


def healthy(entry) -> bool:
    return bool(entry) and bool(entry.get("lladdr")) and \
        not {"FAILED", "INCOMPLETE"} & set(entry.get("state", []))


def addr_flags(ns, dev, address):
    """The flags of `address` on `dev` in `ns` (e.g. ["tentative"], ["dadfailed", "tentative"]),
    None when the address is absent."""
    for link in ns.ip_json("-6", "addr", "show", "dev", dev):
        for info in link.get("addr_info", []):
            if same_address(info.get("local"), address):
                return [flag for flag in ("tentative", "dadfailed", "optimistic", "deprecated")
                        if info.get(flag)]
    return None


ARP_REQUEST = ("import sys; from lab import spoof; dev, mac, sender, target = sys.argv[1:5]; "
               "spoof.transmit(dev, spoof.ether(spoof.BROADCAST, mac, spoof.ETH_P_ARP, "
               "spoof.arp(1, mac, sender, '00:00:00:00:00:00', target)))")


def send_garp(pod, kind):
    """A gratuitous announcement from the pod's own address and MAC, broadcast on its
    interface (lab/spoof.py's frame builders): "request" as `arping -U` (sender =
    target = own IPv4), "reply" as `arping -A`, "na" an unsolicited IPv6 neighbour
    advertisement (Override set) of its own address to ff02::1 from its link-local."""
    if kind == "request":
        argv = ["-c", ARP_REQUEST, pod.ifname, pod_mac(pod), v4(pod), v4(pod)]
    elif kind == "reply":
        argv = ["-m", "lab.spoof", "arp-reply", v4(pod), "--claim", v4(pod), "--broadcast", "--dev", pod.ifname]
    else:
        argv = ["-m", "lab.spoof", "na", "--claim", v6(pod), "--dst", "ff02::1", "--dev", pod.ifname]
    pod.ns.run([sys.executable, *argv], cwd=REPO)


def arp_probe_answer(pod, address) -> str:
    """An RFC 5227 ARP probe (sender 0.0.0.0, as `arping -D` or a DHCP client sends) for
    `address` from the pod; returns the ARP replies the pod captured (tcpdump)."""
    capture = subprocess.Popen(["ip", "netns", "exec", pod.ns.name, "timeout", "10", "tcpdump", "-n", "-l",
                                "-c", "1", "-i", pod.ifname, "arp and arp[6:2] == 2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(5):  # tcpdump's two banner lines, the second once it listens
            if capture.stderr.readline().startswith("listening on"):
                break
        pod.ns.run([sys.executable, "-c", ARP_REQUEST, pod.ifname, pod_mac(pod), "0.0.0.0", address], cwd=REPO)
        return capture.communicate(timeout=15)[0]
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.wait()


def ask_from(ns, address, port):
    """lab.tcp_echo from any namespace: the source address the server saw (None: no reply)."""
    out = ns.run([sys.executable, "-m", "lab.tcp_echo", "ask", address, str(port)], check=False, cwd=REPO)
    return out.stdout.strip() if out.returncode == 0 else None


def pod_check(pod, netconf=None):
    cni = os.path.join(pod.node.cluster.installed, "cni")
    base = netconf or conf(pod.node)
    return invoke(f"{cni}/weft", "CHECK", {**base, "prevResult": pod.result}, container_id=pod.cid,
                  netns=pod.ns.path, ifname=pod.ifname, cni_path=cni, node=pod.node.ns)


# -- pod <-> pod ----------------------------------------------------------------------------

def assert_pairs(pairs, families=(v4, v6), port=7500):
    """ping and TCP for each (src, dst) and family; the server must see src's own address."""
    failures = []
    for src, dst in pairs:
        for family in families:
            address = family(dst)
            where = f"{src.node.name}/{src.ifname}/{family(src)} -> {dst.node.name}/{dst.ifname}/{address}"
            if not src.ping(address):
                failures.append(f"ping {where}")
            port += 1
            server = serve_tcp(dst.ns, address, port, 1)
            try:
                seen = src.tcp(address, port)
            finally:
                server.kill()
                server.wait()
            if not same_address(seen, family(src)):
                failures.append(f"tcp {where}: the server saw {seen!r}, not the pod's own address")
    assert not failures, failures


def test_pod_to_pod_same_node_and_across_nodes_both_families(cluster):
    nodes = start(cluster, 2)
    a, b = add(nodes[0]), nodes[0].add_pod()  # b: added standalone (no weftd serving the call)
    d = add(nodes[0], extra={"runtimeConfig": {"mac": REQUESTED_MAC}})  # a MAC the runtime asked for
    c = add(nodes[1])
    assert pod_mac(d) == REQUESTED_MAC
    assert_validating(nodes[0], [a, b, d])
    assert_validating(nodes[1], [c])
    assert_pairs(((a, b), (b, a), (a, c), (c, a), (c, b), (d, a), (a, d), (d, c), (c, d)))
    # the node and its pods: a host-network server sees the pod's own address, the node reaches the pod
    for family, node_address in ((v4, nodes[0].ip), (v6, None)):
        if node_address is None:  # the node's address on the pod network (the IPv6 gateway)
            node_address = a.result["ips"][1]["gateway"]
        server = serve_tcp(nodes[0].ns, node_address, 7590, 1)
        try:
            seen = a.tcp(node_address, 7590)
        finally:
            server.kill()
            server.wait()
        assert same_address(seen, family(a)), f"pod -> node {node_address}: the node saw {seen!r}"
        assert nodes[0].ns.run(["ping", "-c1", "-W2", family(a)], check=False).returncode == 0
    assert_nothing_spoofed(nodes)


def test_secondary_network_interfaces_are_validated_and_talk(cluster):
    """Multus-style: each pod has eth0 on weft and net1 on weft2 (own bridge, no default
    route); each interface is validated in its own network's table and speaks there."""
    cluster.set_network(NETWORK, DUAL)
    cluster.set_network("weft2", {"Network": "10.250.0.0/16", "Backend": {"Type": "vxlan", "VNI": 2}})
    nodes = [cluster.add_node() for _ in range(2)]
    for node in nodes:
        node.start_agent(networks=(NETWORK, "weft2"))
    for node in nodes:
        for network in (NETWORK, "weft2"):
            node.wait_ready(network)
            wait_for(lambda: len(node.status(network)["peers"]) == 1, 20, what=f"{node.name} {network} peers")
    pairs = []
    for node in (nodes[0], nodes[0], nodes[1]):
        primary = add(node)
        secondary = node.add_pod("weft2", ifname="net1", ns=primary.ns, conf=node.netconf(
            "weft2", bridge="cbr1", isDefaultGateway=False, agentSocket=os.path.join(node.run_dir, "weftd.sock")))
        pairs.append((primary, secondary))
    (a, a2), (b, b2), (c, c2) = pairs
    for node, pods in ((nodes[0], pairs[:2]), (nodes[1], pairs[2:])):
        assert_validating(node, [p for p, _ in pods])
        assert_validating(node, [s for _, s in pods], "weft2")
    networks = (NETWORK, "weft2")
    assert_pairs(((a2, b2), (b2, a2), (a2, c2), (c2, b2)), families=(v4,), port=7550)
    assert_pairs(((a, b), (a, c)), port=7560)
    assert_nothing_spoofed(nodes, networks)


# -- pod -> outside, masqueraded -----------------------------------------------------------

def test_pod_to_outside_is_masqueraded_to_the_node_both_families(cluster):
    nodes = start(cluster, 1)
    node = nodes[0]
    # an IPv6 underlay beside the IPv4 one: the "outside" host is the underlay namespace
    outside6, node6 = "fd99:100::254", "fd99:100::1"
    cluster.underlay.run(["ip", "-6", "addr", "add", f"{outside6}/64", "dev", "ul0", "nodad"])
    node.ns.run(["ip", "-6", "addr", "add", f"{node6}/64", "dev", "eth0", "nodad"])
    pod = add(node)
    assert_validating(node, [pod])
    server = serve_tcp(cluster.underlay, ETCD_IP, 7600, 1)
    try:
        assert pod.tcp(ETCD_IP, 7600) == node.ip, "pod -> outside (IPv4) was not masqueraded to the node"
    finally:
        server.kill()
        server.wait()
    server = serve_tcp(cluster.underlay, outside6, 7601, 1)
    try:
        seen = pod.tcp(outside6, 7601)
        assert same_address(seen, node6), f"pod -> outside (IPv6): the outside host saw {seen!r}"
    finally:
        server.kill()
        server.wait()
    assert pod.ping(ETCD_IP) and pod.ping(outside6)
    assert_nothing_spoofed(nodes)


# -- hostPort through the chained reference portmap ------------------------------------------

def test_host_port_through_chained_portmap(cluster):
    nodes = start(cluster, 2)
    node = nodes[0]
    outside6, node6 = "fd99:100::254", "fd99:100::1"
    cluster.underlay.run(["ip", "-6", "addr", "add", f"{outside6}/64", "dev", "ul0", "nodad"])
    node.ns.run(["ip", "-6", "addr", "add", f"{node6}/64", "dev", "eth0", "nodad"])
    other, neighbour = add(nodes[1]), add(node)
    weft_entry = {k: v for k, v in conf(node).items() if k not in ("cniVersion", "name")}
    conflist = {"cniVersion": "1.0.0", "name": NETWORK, "plugins": [
        weft_entry,
        {"type": "portmap", "capabilities": {"portMappings": True},
         "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 7700, "protocol": "tcp"}]}}]}
    pod_ns = Namespace("wphp")
    cni_path = f"{cluster.installed}/cni:/usr/lib/cni"
    cid = f"hostport-{pod_ns.name}"
    kwargs = dict(container_id=cid, netns=pod_ns.path, ifname="eth0", node=node.ns)
    try:
        out, result = run_chain(conflist["plugins"], "ADD", conflist, cni_path, **kwargs)
        assert out.code == 0, out
        pod = Pod(node, NETWORK, pod_ns, cid, "eth0", result)
        assert_validating(node, [pod])
        # a client outside every node (the underlay host) -> node IP:hostPort, DNAT'd to the
        # pod, both families; the reply leaves the pod with its own source and is un-DNAT'd
        servers = [serve_tcp(pod.ns, v4(pod), 7700, 4), serve_tcp(pod.ns, v6(pod), 7700, 1)]
        try:
            for address, client in ((node.ip, ETCD_IP), (node6, outside6)):
                seen = ask_from(cluster.underlay, address, 8080)
                assert same_address(seen, client), f"hostPort {address}:8080 from outside: no reply, or " \
                                                   f"the pod saw {seen!r}"
            # a pod of the other node -> node IP:hostPort (masqueraded to its node on the way)
            seen = other.tcp(node.ip, 8080)
            assert seen == nodes[1].ip, f"hostPort from the other node's pod: the pod saw {seen!r}"
            # a pod of the same node and the pod itself (hairpin): portmap masquerades what
            # comes from the pod's own subnet to the bridge's address, so replies go back
            # through the node
            for client in (neighbour, pod):
                seen = client.tcp(node.ip, 8080)
                assert seen == result["ips"][0]["gateway"], \
                    f"hostPort from {client.ns.name} on the same node: the pod saw {seen!r}"
        finally:
            for server in servers:
                server.kill()
                server.wait()
        assert_nothing_spoofed(nodes)
    finally:
        run_chain(conflist["plugins"], "DEL", conflist, cni_path, **kwargs)
        pod_ns.delete()


# -- replies of a pod behind a Service-like DNAT ------------------------------------------

SERVICE_TABLE = """table {family} svc_test {{
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
{dnat}
  }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
{snat}
  }}
}}
"""


def test_replies_from_pods_behind_a_service_dnat(cluster):
    """kube-proxy's part, by hand, in the client's node: virtual IP:port -> a pod of
    another node, of the same node (the reply bridged back, un-DNAT'd by conntrack through
    br_netfilter), or the client itself (hairpin: masqueraded to the gateway, as kube-proxy
    does).  The backend answers from its own address; the client sees the VIP."""
    nodes = start(cluster, 2)
    client, local = add(nodes[0]), add(nodes[0])
    remote = add(nodes[1])
    assert_validating(nodes[0], [client, local])
    assert_validating(nodes[1], [remote])
    own = {"ip": v4, "ip6": v6}
    gateway = {"ip": client.result["ips"][0]["gateway"], "ip6": client.result["ips"][1]["gateway"]}
    vips = {("ip", "remote"): ("10.96.0.10", remote, 7801), ("ip", "local"): ("10.96.0.11", local, 7802),
            ("ip", "hairpin"): ("10.96.0.12", client, 7803),
            ("ip6", "remote"): ("fd00:96::10", remote, 7804), ("ip6", "local"): ("fd00:96::11", local, 7805),
            ("ip6", "hairpin"): ("fd00:96::12", client, 7806)}
    for family in ("ip", "ip6"):
        def target(pod, port):
            return f"[{v6(pod)}]:{port}" if family == "ip6" else f"{v4(pod)}:{port}"

        dnat = "\n".join(f"    {family} daddr {vip} tcp dport 80 dnat to {target(pod, port)}"
                         for (fam, _), (vip, pod, port) in vips.items() if fam == family)
        mine = own[family](client)
        snat = f"    {family} saddr {mine} {family} daddr {mine} masquerade"
        nodes[0].ns.run(["nft", "-f", "-"], input=SERVICE_TABLE.format(family=family, dnat=dnat, snat=snat))
    failures = []
    for (family, where), (vip, pod, port) in vips.items():
        server = serve_tcp(pod.ns, own[family](pod), port, 1)
        try:
            seen = client.tcp(vip, 80)  # connected to the VIP: a reply must come back from it
        finally:
            server.kill()
            server.wait()
        expected = gateway[family] if where == "hairpin" else own[family](client)
        if not same_address(seen, expected):
            failures.append(f"{family} service {vip} -> {where} pod {pod.ns.name}: the backend saw {seen!r}, "
                            f"expected {expected}")
    assert not failures, failures
    assert_nothing_spoofed(nodes)


# -- IPv6 neighbour discovery and duplicate address detection ---------------------------------

def test_ipv6_neighbour_discovery_and_dad(cluster):
    node, = start(cluster, 1)
    a, b = add(node), add(node)
    assert_validating(node, [a, b])
    gateway6 = a.result["ips"][1]["gateway"]
    mine = v6(a)
    prefix = ipaddress.ip_interface(a.result["ips"][1]["address"]).network.prefixlen

    # the link-local address each pod got at ADD (its DAD ran as the interface came up)
    def link_local(pod):
        for link in pod.ns.ip_json("-6", "addr", "show", "dev", pod.ifname, "scope", "link"):
            for info in link.get("addr_info", []):
                if info.get("local"):
                    return info["local"]
        return None

    for pod in (a, b):
        wait_for(lambda: link_local(pod) and addr_flags(pod.ns, pod.ifname, link_local(pod)) == [], 10,
                 what=f"{pod.ns.name}'s link-local address out of DAD")

    # neighbour discovery both ways: pod <-> gateway, pod <-> pod, node -> pod, link-local
    assert a.ping(gateway6) and a.ping(v6(b)) and b.ping(mine)
    for address in (mine, v6(b)):
        assert node.ns.run(["ping", "-6", "-c1", "-W2", address], check=False).returncode == 0
    assert a.ns.run(["ping", "-6", "-c1", "-W2", "-I", a.ifname, link_local(b)], check=False).returncode == 0
    for ns, dev, address in ((a.ns, a.ifname, gateway6), (a.ns, a.ifname, v6(b)), (b.ns, b.ifname, mine),
                             (node.ns, "cbr0", mine), (node.ns, "cbr0", v6(b))):
        entry = neigh(ns, address, dev)
        assert healthy(entry), f"{ns.name}: neighbour {address} on {dev} is {entry}"
    assert neigh(a.ns, gateway6, a.ifname)["lladdr"] == node.ns.ip_json("link", "show", "cbr0")[0]["address"]
    assert neigh(node.ns, mine, "cbr0")["lladdr"] == pod_mac(a)

    # the pod's DAD probe (NS from :: to the solicited-node group) reaches the node: the
    # node holds the same address and defends it, so the pod's copy fails DAD
    routes = a.ns.ip_json("-6", "route", "show", "dev", a.ifname)
    node.ns.run(["ip", "-6", "addr", "add", f"{mine}/128", "dev", "cbr0", "nodad"])
    try:
        a.ns.run(["ip", "-6", "addr", "del", f"{mine}/{prefix}", "dev", a.ifname])
        a.ns.run(["ip", "-6", "addr", "add", f"{mine}/{prefix}", "dev", a.ifname])  # DAD on
        wait_for(lambda: "dadfailed" in (addr_flags(a.ns, a.ifname, mine) or []), 15,
                 what="the pod's DAD seeing the node's defence")
    finally:
        node.ns.run(["ip", "-6", "addr", "del", f"{mine}/128", "dev", "cbr0"], check=False)
    # with nobody else holding it, the pod's own address passes DAD
    a.ns.run(["ip", "-6", "addr", "del", f"{mine}/{prefix}", "dev", a.ifname])
    a.ns.run(["ip", "-6", "addr", "add", f"{mine}/{prefix}", "dev", a.ifname])
    wait_for(lambda: addr_flags(a.ns, a.ifname, mine) == [], 15, what="the pod's own address out of DAD")
    for route in routes:  # what the address took with it (ADD's routes), as ADD made them
        if route.get("gateway"):
            a.ns.run(["ip", "-6", "route", "replace", route["dst"] if route["dst"] != "default" else "::/0",
                      "via", route["gateway"], "dev", a.ifname])
    # the pod's neighbour advertisement for its own address reaches the node: the node's
    # own DAD of that address fails (the node namespace starts with accept_dad 0, as the
    # machine's: DAD is switched on for the bridge for this one address)
    accept_dad = "net.ipv6.conf.cbr0.accept_dad"
    was = node.ns.run(["sysctl", "-n", accept_dad]).stdout.strip()
    node.ns.run(["sysctl", "-qw", f"{accept_dad}=1"])
    try:
        node.ns.run(["ip", "-6", "addr", "add", f"{mine}/128", "dev", "cbr0"])  # DAD on
        wait_for(lambda: "dadfailed" in (addr_flags(node.ns, "cbr0", mine) or []), 15,
                 what="the node's DAD seeing the pod's defence")
    finally:
        node.ns.run(["ip", "-6", "addr", "del", f"{mine}/128", "dev", "cbr0"], check=False)
        node.ns.run(["sysctl", "-qw", f"{accept_dad}={was}"])
    assert addr_flags(a.ns, a.ifname, mine) == [], "the pod lost its address defending it"
    assert a.ping(gateway6) and b.ping(mine)
    assert pod_check(a).code == 0, pod_check(a)
    assert_nothing_spoofed([node])


def test_mldv1_pod_joins_its_solicited_node_group_during_dad(cluster):
    """A pod whose MLD speaks version 1 (force_mld_version=1, or Linux's fallback after it
    hears an MLDv1 querier such as a Linux bridge's own) joins the solicited-node group
    of its tentative link-local address with an MLDv1 report (type 131) from ::, sent to
    the group itself, as RFC 3590 prescribes while no link-local address is usable."""
    node, = start(cluster, 1)
    ns = Namespace("wpml")
    try:
        ns.run(["sysctl", "-qw", "net.ipv6.conf.default.force_mld_version=1"])  # eth0 arrives with it
        pod = node.add_pod(ns=ns, conf=conf(node))
    except BaseException:
        ns.delete()
        raise
    assert ns.run(["sysctl", "-n", f"net.ipv6.conf.{pod.ifname}.force_mld_version"]).stdout.strip() == "1"
    wait_for(lambda: [info for link in ns.ip_json("-6", "addr", "show", "dev", pod.ifname, "scope", "link")
                      for info in link.get("addr_info", []) if info.get("local") and not info.get("tentative")],
             10, what="the pod's link-local address out of DAD")
    assert pod.ping(pod.result["ips"][1]["gateway"])
    assert_nothing_spoofed([node])


# -- gratuitous ARP -----------------------------------------------------------------------------

def test_gratuitous_arp_and_unsolicited_na_from_the_pods_own_address(cluster):
    node, = start(cluster, 1)
    a, b = add(node), add(node)
    assert_validating(node, [a, b])
    for address in (v4(a), v6(a)):  # the node and the other pod hold an entry for the pod
        assert node.ns.run(["ping", "-c1", "-W2", address], check=False).returncode == 0 and b.ping(address)
    mac = pod_mac(a)
    for kind, address in (("request", v4(a)), ("reply", v4(a)), ("na", v6(a))):
        # both hold a stale, wrong entry for the pod's address ...
        node.ns.run(["ip", "neigh", "replace", address, "lladdr", BOGUS_MAC, "dev", "cbr0", "nud", "stale"])
        b.ns.run(["ip", "neigh", "replace", address, "lladdr", BOGUS_MAC, "dev", b.ifname, "nud", "stale"])
        time.sleep(1.2)  # past the ARP locktime (1 s): any announcement may override the entry
        send_garp(a, kind)  # ... which the pod's announcement corrects
        for ns, dev in ((node.ns, "cbr0"), (b.ns, b.ifname)):
            wait_for(lambda: (neigh(ns, address, dev) or {}).get("lladdr") == mac, 5,
                     what=f"{ns.name}'s entry for {address} taken from the pod's gratuitous {kind}")
    # an ARP probe claims nothing: it passes, and the node answers it for its own address
    gateway = a.result["ips"][0]["gateway"]
    answer = arp_probe_answer(a, gateway)
    assert f"Reply {gateway} is-at {node.ns.ip_json('link', 'show', 'cbr0')[0]['address']}" in answer, answer
    assert_nothing_spoofed([node])
    assert b.ping(v4(a)) and b.ping(v6(a))


# -- the opt-out: a router pod forwarding for a client behind it ----------------------------------

def router(node, netns, index, netconf, name):
    """A pod R with ip_forward on and a second interface (not weft's) into a client
    namespace 172.31.<index>.0/24 behind it.  Returns (R, client namespace)."""
    pod = node.add_pod(conf=netconf, name=name)
    client = netns("wrcl")
    pod.ns.run(["ip", "link", "add", "cl0", "type", "veth", "peer", "name", "eth0", "netns", client.name])
    pod.ns.run(["ip", "addr", "add", f"172.31.{index}.1/24", "dev", "cl0"])
    pod.ns.run(["ip", "link", "set", "cl0", "up"])
    pod.ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    client.run(["ip", "addr", "add", f"172.31.{index}.2/24", "dev", "eth0"])
    client.run(["ip", "link", "set", "eth0", "up"])
    client.run(["ip", "route", "add", "default", "via", f"172.31.{index}.1"])
    return pod, client


def test_opt_out_lets_a_router_pod_forward(cluster, netns):
    node, = start(cluster, 1)
    target = add(node, name="target")
    validated, client1 = router(node, netns, 41, conf(node), "plain-router")
    exempt_conf = conf(node, allowSpoofing=True)
    exempt, client2 = router(node, netns, 42, exempt_conf, "vpn-router")
    for index, pod in ((41, validated), (42, exempt)):
        target.ns.run(["ip", "route", "add", f"172.31.{index}.0/24", "via", v4(pod)])
    assert_validating(node, [target, validated])
    port_of = host_veth(exempt.cid, exempt.ifname)
    assert port_of not in json.dumps(guard_table(node)), "the exempt pod's port has validation elements"
    with open(os.path.join(node.run_dir, f"{NETWORK}.ports", port_of)) as handle:
        assert json.load(handle)["validated"] is False

    # the router pods speak as themselves either way
    for port, pod in ((7900, validated), (7901, exempt)):
        server = target.serve_tcp(port, 1)
        try:
            assert pod.tcp(v4(target), port) == v4(pod)
        finally:
            server.kill()
            server.wait()

    # exempt: the client's packets, forwarded with the client's source, reach the target
    before = counts([node])
    server = target.serve_tcp(7902, 1)
    try:
        assert ask_from(client2, v4(target), 7902) == "172.31.42.2", \
            "allowSpoofing: true, yet the router pod's forwarded packets did not reach the target"
    finally:
        server.kill()
        server.wait()
    assert client2.run(["ping", "-c1", "-W2", v4(target)], check=False).returncode == 0
    assert_nothing_spoofed([node])

    # validated (the default): the same forwarding is dropped at the bridge, counted, named
    server = target.serve_tcp(7903, 1)
    try:
        reached = ask_from(client1, v4(target), 7903)
    finally:
        server.kill()
        server.wait()
    assert reached is None, f"a validated router pod forwarded for 172.31.41.2 (the target saw {reached!r})"
    assert client1.run(["ping", "-c2", "-W1", v4(target)], check=False).returncode != 0
    assert dropped(node) > before[(node.name, NETWORK)][1], "the table's own drop counter did not move"
    router_port = host_veth(validated.cid, validated.ifname)
    assert [r for r in recorded(node) if r.startswith("seen4: ") and router_port in r and "172.31.41.2" in r], \
        recorded(node)
    wait_for(lambda: spoofed(node) > before[(node.name, NETWORK)][0], 20,
             what=f"{SPOOFED} counting the router's forwarded packets")
    wait_for(lambda: "source validation dropped what default/plain-router sent as 172.31.41.2" in node.log(),
             20, what="the drop logged with the pod's name")

    # the exemption is visible: status file and weftctl status (inside the node)
    wait_for(lambda: ((node.status() or {}).get("sourceValidation") or {}).get("exempt") == 1, 20,
             what="status counting one exempt pod")
    state = node.status()["sourceValidation"]
    assert state["exemptPods"] == ["default/vpn-router"] and state["ports"] == 2, state
    assert state["state"] == "enforcing" and state["spoofedPackets"] > 0, state
    status = node.ns.run([f"{cluster.installed}/bin/weftctl", "status", "--run-dir", node.run_dir]).stdout
    assert "2 pod interface(s) validated, 1 exempt (netconf allowSpoofing: true): default/vpn-router" in status, \
        status

    # CHECK: each pod is validated as its netconf says
    assert pod_check(exempt, exempt_conf).code == 0, pod_check(exempt, exempt_conf)
    assert pod_check(target).code == 0, pod_check(target)
    wrong = pod_check(exempt)  # the exempt pod checked against a netconf that validates
    assert wrong.code == 1 and wrong.json["code"] == 104, wrong
    assert "is not in place (allowSpoofing is false)" in wrong.json["msg"], wrong
    wrong = pod_check(validated, exempt_conf)
    assert wrong.code == 1 and wrong.json["code"] == 104, wrong
    assert "has allowSpoofing: true, but host veth" in wrong.json["msg"], wrong
    # an element deleted by hand (the agent stopped, so nothing repairs it meanwhile)
    node.stop_agent()
    veth = host_veth(target.cid, target.ifname)
    node.ns.run(["nft", "delete", "element", "bridge", TABLE, "addr4", f"{{ {veth} . {v4(target)} }}"])
    broken = pod_check(target)
    assert broken.code == 1 and broken.json["code"] == 104, broken
    assert f"source validation of host veth {veth} is not in place" in broken.json["msg"], broken
    assert "set addr4" in broken.json["msg"], broken
    # the restarted agent puts it back from the port record (its first pass: logged, not
    # counted as drift, as the masquerade controller does) ...
    node.start_agent()
    node.wait_ready()
    wait_for(lambda: pod_check(target).code == 0, 20, what="the deleted element restored by weftd")
    assert f"source validation table bridge {TABLE} repaired: set addr4: 1 missing element(s) restored" \
        in node.log(), node.log()[-3000:]
    # ... and an element deleted under a running agent comes back as counted drift
    node.ns.run(["nft", "delete", "element", "bridge", TABLE, "addr4", f"{{ {veth} . {v4(target)} }}"])
    wait_for(lambda: (node.status().get("sourceValidation") or {}).get("driftRepaired") == 1, 20,
             what="one repair counted")
    assert pod_check(target).code == 0
    assert f"reconcile repaired source validation table bridge {TABLE}" in node.log()
