"""ADD -> CHECK -> DEL -> DEL in real namespaces, for every supported cniVersion."""

import json
import os

import pytest

from cni_plugin.datapath.naming import host_veth_name

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def sysctl(ns, path):
    return ns.run(["cat", f"/proc/sys/{path}"]).stdout.strip()


def link(ns, name):
    links = [entry for entry in ns.ip_json("-d", "link", "show") if entry["ifname"] == name]
    return links[0] if links else None


def addresses(ns, name):
    return {f"{a['local']}/{a['prefixlen']}" for entry in ns.ip_json("addr", "show", "dev", name)
            for a in entry["addr_info"] if a["scope"] == "global"}


def routes(ns, family="-4"):
    return {(r["dst"], r.get("gateway"), r.get("dev")) for r in ns.ip_json(family, "route", "show")}


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_del(weft, node, pods, version):
    pod = pods()
    conf = weft.conf(version, mtu=1400, ipam={"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
                                                "ranges": [[{"subnet": "10.244.1.0/24"}]],
                                                "routes": [{"dst": "10.96.0.0/12"}]})
    added = weft("ADD", conf, pod)
    assert added.code == 0, added
    result = added.json
    assert result["cniVersion"] == version

    host = host_veth_name("c1", "eth0")
    # result layout: [bridge, host veth, container iface]
    assert [i["name"] for i in result["interfaces"]] == ["cbr0", host, "eth0"]
    assert result["interfaces"][2]["sandbox"] == pod.path
    (ip,) = result["ips"]
    assert ip["address"] == "10.244.1.2/24" and ip["gateway"] == "10.244.1.1"
    assert ip["interface"] == 2
    assert ("version" in ip) == version.startswith("0.")
    if version.startswith("0."):
        assert ip["version"] == "4"
    assert ("mtu" in result["interfaces"][2]) == (version == "1.1.0")
    assert {r["dst"] for r in result["routes"]} == {"10.96.0.0/12", "0.0.0.0/0"}

    # kernel state, host side
    bridge = link(node, "cbr0")
    assert bridge["linkinfo"]["info_kind"] == "bridge" and bridge["mtu"] == 1400
    assert "UP" in bridge["flags"]
    assert addresses(node, "cbr0") == {"10.244.1.1/24"}
    veth = link(node, host)
    assert veth["linkinfo"]["info_kind"] == "veth" and veth["master"] == "cbr0" and veth["mtu"] == 1400
    assert sysctl(node, f"net/ipv6/conf/{host}/accept_ra") == "0"
    assert sysctl(node, "net/ipv6/conf/cbr0/accept_ra") == "0"
    assert sysctl(node, "net/ipv4/ip_forward") == "1"
    # kernel state, container side
    eth0 = link(pod, "eth0")
    assert eth0["mtu"] == 1400 and "UP" in eth0["flags"]
    assert eth0["address"] == result["interfaces"][2]["mac"]
    assert addresses(pod, "eth0") == {"10.244.1.2/24"}
    assert {("default", "10.244.1.1", "eth0"), ("10.96.0.0/12", "10.244.1.1", "eth0")} <= routes(pod)
    # the pod reaches its gateway
    assert pod.run(["ping", "-c1", "-W2", "10.244.1.1"], check=False).returncode == 0

    if version not in ("0.3.0", "0.3.1"):
        checked = weft("CHECK", {**conf, "prevResult": result}, pod)
        assert checked.code == 0, checked
    else:  # CHECK does not exist before 0.4.0
        assert weft("CHECK", {**conf, "prevResult": result}, pod).json["code"] == 1

    del_conf = {**conf, "prevResult": result} if version != "0.3.0" else conf
    for _ in range(2):
        deleted = weft("DEL", del_conf, pod)
        assert deleted.code == 0, deleted
        assert link(node, host) is None and link(pod, "eth0") is None
        assert weft.ipam_files() == []


def test_check_reports_drift(weft, node, pods):
    pod = pods()
    conf = weft.conf("1.0.0")
    result = weft("ADD", conf, pod).json
    host = host_veth_name("c1", "eth0")
    mac = result["interfaces"][2]["mac"]

    def drifted(*needles):
        checked = weft("CHECK", {**conf, "prevResult": result}, pod)
        assert checked.code == 1 and checked.json["code"] == 104, checked
        assert all(needle in checked.json["msg"] for needle in needles), (needles, checked.json["msg"])

    def healed():
        checked = weft("CHECK", {**conf, "prevResult": result}, pod)
        assert checked.code == 0, checked

    pod.run(["ip", "route", "del", "default"])
    drifted("route 0.0.0.0/0 via 10.244.1.1", "eth0")
    pod.run(["ip", "route", "add", "default", "via", "10.244.1.1"])
    healed()
    pod.run(["ip", "addr", "del", "10.244.1.2/24", "dev", "eth0"])
    drifted("eth0", "lacks address 10.244.1.2/24")
    pod.run(["ip", "addr", "add", "10.244.1.2/24", "dev", "eth0"])
    pod.run(["ip", "route", "replace", "default", "via", "10.244.1.1"])
    healed()
    pod.run(["ip", "link", "set", "eth0", "address", "02:00:00:00:00:42"])
    drifted("eth0", "MAC 02:00:00:00:00:42", f"expected {mac}")
    pod.run(["ip", "link", "set", "eth0", "address", mac])
    healed()
    pod.run(["ip", "link", "set", "eth0", "down"])
    drifted("eth0 is down")
    pod.run(["ip", "link", "set", "eth0", "up"])
    pod.run(["ip", "route", "replace", "default", "via", "10.244.1.1"])
    healed()
    node.run(["ip", "link", "set", host, "mtu", "1400"])
    drifted(f"host veth {host}", "MTU 1400", "expected 1500")
    node.run(["ip", "link", "set", host, "mtu", "1500"])
    healed()
    node.run(["ip", "link", "set", host, "nomaster"])
    drifted(f"host veth {host}", "not attached to bridge cbr0")
    node.run(["ip", "link", "set", host, "master", "cbr0"])
    healed()
    pod.run(["ip", "link", "set", "eth0", "mtu", "1300"])
    drifted("eth0", "MTU 1300", "expected 1500")


def test_del_when_the_interface_is_gone_but_the_namespace_remains(weft, node, pods):
    pod = pods()
    conf = weft.conf()
    assert weft("ADD", conf, pod).code == 0
    pod.run(["ip", "link", "del", "eth0"])  # takes the host end with it
    assert link(node, host_veth_name("c1", "eth0")) is None
    for _ in range(2):
        deleted = weft("DEL", conf, pod)
        assert deleted.code == 0, deleted
    assert weft.ipam_files() == []
    assert {e["ifname"] for e in pod.ip_json("link", "show")} == {"lo"}


def test_is_gateway_false_leaves_the_bridge_without_address(weft, node, pods):
    pod = pods()
    conf = weft.conf(isGateway=False, isDefaultGateway=False)
    added = weft("ADD", conf, pod)
    assert added.code == 0, added
    assert link(node, "cbr0")["linkinfo"]["info_kind"] == "bridge"
    assert addresses(node, "cbr0") == set()
    assert addresses(pod, "eth0") == {"10.244.1.2/24"}
    assert "default" not in {dst for dst, _, _ in routes(pod)}
    assert added.json.get("routes", []) == []
    assert weft("CHECK", {**conf, "prevResult": added.json}, pod).code == 0


def test_del_after_netns_is_gone_releases_ip(weft, node, pods):
    pod = pods()
    conf = weft.conf()
    assert weft("ADD", conf, pod).code == 0
    assert weft.ipam_files() == ["10.244.1.2"]
    pod.delete()
    deleted = weft("DEL", conf, pod)
    assert deleted.code == 0, deleted
    assert weft.ipam_files() == []
    assert link(node, host_veth_name("c1", "eth0")) is None


def test_two_pods_talk_through_the_bridge(weft, pods):
    a, b = pods(), pods()
    conf = weft.conf()
    ra = weft("ADD", conf, a, cid="ca").json
    rb = weft("ADD", conf, b, cid="cb").json
    ip_b = rb["ips"][0]["address"].split("/")[0]
    assert ra["ips"][0]["address"] != rb["ips"][0]["address"]
    assert a.run(["ping", "-c2", "-W2", ip_b], check=False).returncode == 0


def test_requested_mac_and_hairpin(weft, node, pods):
    pod = pods()
    conf = weft.conf(hairpinMode=True, runtimeConfig={"mac": "02:42:ac:11:00:99"})
    result = weft("ADD", conf, pod).json
    assert result["interfaces"][2]["mac"] == "02:42:ac:11:00:99"
    assert link(pod, "eth0")["address"] == "02:42:ac:11:00:99"
    veth = link(node, host_veth_name("c1", "eth0"))
    assert veth["linkinfo"]["info_slave_data"]["hairpin"] is True
    other = pods()
    result = weft("ADD", weft.conf(), other, cid="c2", args="IgnoreUnknown=1;MAC=02:42:ac:11:00:98").json
    assert result["interfaces"][2]["mac"] == "02:42:ac:11:00:98"
    assert link(other, "eth0")["address"] == "02:42:ac:11:00:98"
    third = pods()
    result = weft("ADD", weft.conf(args={"cni": {"mac": "02:42:ac:11:00:97"}}), third, cid="c3").json
    assert result["interfaces"][2]["mac"] == "02:42:ac:11:00:97"
    assert link(third, "eth0")["address"] == "02:42:ac:11:00:97"


def test_force_address(weft, node, pods):
    node.run(["ip", "link", "add", "cbr0", "type", "bridge"])
    node.run(["ip", "addr", "add", "10.244.1.200/24", "dev", "cbr0"])
    refused = weft("ADD", weft.conf(), pods())
    assert refused.json["code"] == 103 and "forceAddress" in refused.json["msg"]
    assert weft.ipam_files() == []
    accepted = weft("ADD", weft.conf(forceAddress=True), pods(), cid="c2")
    assert accepted.code == 0, accepted
    assert addresses(node, "cbr0") == {"10.244.1.1/24"}


def masq_table(node, table="weft_weftnet"):
    """The table as `nft -j` prints it (the nft tool: an oracle apart from weft's libnftables
    binding), or None when absent."""
    out = node.run(["nft", "-j", "list", "table", "inet", table], check=False)
    return json.loads(out.stdout)["nftables"] if out.returncode == 0 else None


def masq_sets(objects) -> dict:
    """{set name: sorted element strings} of a listed table."""
    sets = {}
    for item in objects:
        if "set" in item:
            elems = item["set"].get("elem", [])
            sets[item["set"]["name"]] = sorted(
                f"{e['prefix']['addr']}/{e['prefix']['len']}" if isinstance(e, dict) and "prefix" in e else str(e)
                for e in elems)
    return sets


def handles(objects) -> list:
    return [(kind, item[kind]["handle"]) for item in objects for kind in ("table", "set", "chain", "rule")
            if kind in item]


def test_standalone_masquerade_is_node_wide_and_installed_once(weft, node, pods):
    """No agent: the first ADD installs the node-wide table; later ADDs and DELs leave it
    exactly as it is (same object handles), and nothing in it names a pod."""
    conf = weft.conf(ipMasq=True)
    a, b = pods(), pods()
    assert weft("ADD", conf, a, cid="ca").code == 0
    first = masq_table(node)
    assert first is not None, "the first ADD with ipMasq did not create inet weft_weftnet"
    sets = masq_sets(first)
    assert sets["src4"] == ["10.244.1.0/24"], sets
    assert sets["nomasq4"] == ["10.244.1.0/24", "224.0.0.0/4"], sets
    assert not any("pods4" == name for name in sets), sets
    rules = [item["rule"] for item in first if "rule" in item]
    assert len(rules) == 2 and all(r["expr"][-1] == {"masquerade": {"flags": "fully-random"}} for r in rules)
    assert weft("ADD", conf, b, cid="cb").code == 0
    assert weft("DEL", conf, a, cid="ca").code == 0
    assert weft("DEL", conf, b, cid="cb").code == 0
    assert weft("GC", {**weft.conf("1.1.0", ipMasq=True), "cni.dev/valid-attachments": []}).code == 0
    after = masq_table(node)
    assert after is not None, "DEL/GC removed the node-wide table"
    assert handles(after) == handles(first), "per-pod calls rewrote the node-wide table"


def test_standalone_add_replaces_a_per_pod_table_of_an_older_weft(weft, node, pods):
    """Upgrade: weft before issue 14 kept `inet weft_<net>` with per-pod sets pods4/pods6;
    the first ADD swaps it for the node-wide table in one transaction."""
    node.run(["nft", "-f", "-"], input="""table inet weft_weftnet {
  set pods4 { type ipv4_addr; elements = { 10.244.1.7 comment "old/eth0" } }
  set pods6 { type ipv6_addr; }
  set nomasq4 { type ipv4_addr; flags interval; elements = { 10.244.1.0/24, 224.0.0.0/4 } }
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    ip saddr @pods4 ip daddr != @nomasq4 masquerade
  }
}
""")
    assert weft("ADD", weft.conf(ipMasq=True), pods()).code == 0
    sets = masq_sets(masq_table(node))
    assert "pods4" not in sets and "pods6" not in sets, sets
    assert sets["src4"] == ["10.244.1.0/24"], sets


def test_hostile_ifname_and_container_id_never_reach_nftables(weft, node, pods):
    """An ifname with nft syntax in it: refused by env validation, or accepted with
    nftables seeing only the host veth's digest name and the pod's address (the
    source-validation elements), never the runtime's strings."""
    conf = weft.conf(ipMasq=True)
    assert weft("ADD", conf, pods(), cid="plain").code == 0

    def ruleset():
        return node.run(["nft", "-j", "list", "ruleset"]).stdout

    def other_tables():  # everything but the per-port source-validation elements
        objects = json.loads(ruleset())["nftables"]
        return [o for o in objects if "metainfo" not in o and not ("set" in o and o["set"]["table"].startswith(
            "weft_source_"))]

    before, before_rest = ruleset(), other_tables()
    hostile = pods()
    out = weft("ADD", conf, hostile, cid="hostile", ifname='a",1.2.3.4}#')
    if out.code:
        assert out.json["code"] == 4 and "CNI_IFNAME" in out.json["msg"], out
        assert ruleset() == before
    else:
        assert link(hostile, 'a",1.2.3.4}#') is not None
        assert other_tables() == before_rest
        assert host_veth_name("hostile", 'a",1.2.3.4}#') in ruleset()
    assert "1.2.3.4" not in ruleset() and "}#" not in ruleset()
    assert weft("DEL", conf, hostile, cid="hostile", ifname='a",1.2.3.4}#').code == 0
    assert ruleset() == before
    refused = weft("ADD", conf, pods(), cid='x"}#1.2.3.4')
    assert refused.code == 1 and refused.json["code"] == 4 and "CNI_CONTAINERID" in refused.json["msg"], refused
    assert ruleset() == before
    assert "1.2.3.4" not in before


def test_per_pod_path_starts_no_process(weft, node, pods, tmp_path):
    """Stand-ins for nft, iptables, sysctl and modprobe first on PATH record any call:
    standalone ADD/DEL with masquerade (the table made on the first ADD) exec none of them."""
    marker = tmp_path / "exec-called"
    script = f'echo "$0 $*" >> {marker}\nexit 1\n'
    stub = weft.stub("nft", script)
    for name in ("iptables", "sysctl", "modprobe"):  # not `ip`: the harness runs `ip netns exec`
        os.symlink(f"{stub}/nft", f"{stub}/{name}")
    env = {"PATH": f"{stub}:{os.environ['PATH']}"}
    conf = weft.conf(ipMasq=True)
    pod = pods()
    assert weft("ADD", conf, pod, extra_env=env).code == 0
    assert weft("DEL", conf, pod, extra_env=env).code == 0
    assert not marker.exists(), marker.read_text()


def test_second_add_of_same_attachment_is_refused_and_keeps_the_first(weft, node, pods):
    pod = pods()
    conf = weft.conf()
    assert weft("ADD", conf, pod).code == 0
    again = weft("ADD", conf, pod)
    assert again.json["code"] == 102 and "already exists" in again.json["msg"]
    assert weft.ipam_files() == ["10.244.1.2"]
    assert link(pod, "eth0") is not None


def test_gc_removes_stale_veths_and_allocations(weft, node, pods):
    conf = weft.conf("1.1.0")
    keep, stale = pods(), pods()
    assert weft("ADD", conf, keep, cid="keep").code == 0
    assert weft("ADD", conf, stale, cid="stale").code == 0
    gc = weft("GC", {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    assert gc.code == 0, gc
    assert link(node, host_veth_name("stale", "eth0")) is None
    assert link(node, host_veth_name("keep", "eth0")) is not None
    assert weft.ipam_files() == ["10.244.1.2"]
    assert weft("GC", {**conf, "cni.dev/valid-attachments": []}).code == 0
    assert weft.ipam_files() == []
    assert link(node, host_veth_name("keep", "eth0")) is None


def test_prev_result_from_an_earlier_plugin_is_kept(weft, node, pods):
    """weft in a chain after another plugin: its interfaces and ips come first."""
    pod = pods()
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo0", "sandbox": pod.path}],
            "ips": [{"address": "192.0.2.9/32", "interface": 0}]}
    out = weft("ADD", weft.conf(prevResult=prev), pod)
    assert out.code == 0, out
    result = out.json
    assert [i["name"] for i in result["interfaces"]] == ["lo0", "cbr0", host_veth_name("c1", "eth0"), "eth0"]
    assert result["ips"][0] == {"address": "192.0.2.9/32", "interface": 0}
    assert result["ips"][1]["interface"] == 3
    assert weft("CHECK", {**weft.conf(), "prevResult": result}, pod).code == 0
