"""weft with the reference plugins, chained as libcni does: Debian 12's plugins 1.1
(/usr/lib/cni) at cniVersion 1.0.0, the newest they speak, and plugins 1.9.1 (Debian
sid, unpacked by `make deps` into build/runtimes) at 1.1.0.  Every test runs on both."""

import json
import sys

import pytest

from lab.cluster import REPO, serve_tcp
from lab.cni import path_without_ip6tables, run_chain
from lab.namespaces import stop_process
from lab import runtimes

from cni_plugin.datapath.naming import host_veth_name

REFERENCES = {"plugins-1.1": (lambda: "/usr/lib/cni", "1.0.0"),
              "plugins-1.9": (runtimes.cni_plugins_19, "1.1.0")}


@pytest.fixture(params=sorted(REFERENCES))
def reference(request):
    """(directory of the reference plugins, the cniVersion the chain says)"""
    directory, version = REFERENCES[request.param]
    return directory(), version


@pytest.fixture
def chain_path(installed, reference):
    return f"{installed}/cni:{reference[0]}"


def weft_chain(weft, version, *chained, **weft_keys) -> dict:
    """A conflist: weft (the fixture's standalone network), then `chained` entries."""
    entry = {k: v for k, v in weft.conf(**weft_keys).items() if k not in ("cniVersion", "name")}
    return {"cniVersion": version, "name": "weftnet", "plugins": [entry, *chained]}


PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True},
           "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}


def rules(node, table):
    return node.run(["iptables-save", "-t", table]).stdout.splitlines()


def host_port_reaches_pod(node, pod):
    """A connection from the node to its own 10.244.1.1:8080 is answered by the pod's :80."""
    server = serve_tcp(pod, "10.244.1.2", 80, 1)
    try:
        seen = node.run([sys.executable, "-m", "lab.tcp_echo", "ask", "10.244.1.1", "8080"], check=False, cwd=REPO)
        assert seen.returncode == 0, "node:8080 did not reach the pod's port 80"
        assert seen.stdout.strip() == "10.244.1.1"  # DNAT only: the pod sees the node's address
    finally:
        stop_process(server, 10)


def plugin_path(reference, tmp_path) -> str:
    """PATH for the chain.  Debian's portmap 1.1.1 CHECKs its IPv4 DNAT rules in the IPv6
    table whenever ip6tables exists, so CHECK of any IPv4 pod fails: its chain runs where
    ip6tables is absent (lab.cni.path_without_ip6tables).  Plugins 1.9.1 get the full PATH."""
    return path_without_ip6tables(tmp_path) if reference[1] == "1.0.0" else "/usr/sbin:/usr/bin:/sbin:/bin"


def status_and_gc(conflist, chain_path, kwargs):
    """What a runtime with libcni 1.2+ (containerd 2.x) adds at 1.1.0: STATUS, and GC naming
    the attachments still in use, each plugin of the list in turn."""
    out, _ = run_chain(conflist["plugins"], "STATUS", conflist, chain_path, **kwargs)
    assert out.code == 0, out
    out, _ = run_chain(conflist["plugins"], "GC", conflist, chain_path, **kwargs,
                       valid_attachments=[{"containerID": kwargs["container_id"], "ifname": "eth0"}])
    assert out.code == 0, out


def test_weft_then_portmap_bandwidth_tuning(weft, node, pods, reference, chain_path, tmp_path):
    version = reference[1]
    pod = pods()
    conflist = weft_chain(weft, version, PORTMAP,
                          {"type": "bandwidth", "ingressRate": 1000000, "ingressBurst": 100000,
                           "egressRate": 1000000, "egressBurst": 100000},
                          {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"}})
    kwargs = dict(container_id="chain1", netns=pod.path, ifname="eth0", node=node,
                  extra_env={"PATH": plugin_path(reference, tmp_path)})
    out, result = run_chain(conflist["plugins"], "ADD", conflist, chain_path, **kwargs)
    assert out.code == 0, out
    assert result["cniVersion"] == version
    assert result["ips"][0]["address"] == "10.244.1.2/24"
    # portmap programmed DNAT for the pod, bandwidth shaped the host veth, tuning set the sysctl
    # portmap writes iptables rules (Debian's iptables is the nft variant, so iptables-save
    # reads them back): one DNAT of host port 8080 to the pod's port 80
    nat = rules(node, "nat")
    dnat = [line for line in nat if "--dport 8080" in line and "--to-destination 10.244.1.2:80" in line]
    assert len(dnat) == 1, "\n".join(nat)
    host_port_reaches_pod(node, pod)
    # bandwidth: a 1 Mbit tbf on the host veth, its ingress redirected to an ifb shaped the same
    host = host_veth_name("chain1", "eth0")
    veth_qdiscs = node.run(["tc", "qdisc", "show", "dev", host]).stdout
    assert "qdisc tbf" in veth_qdiscs and "rate 1Mbit" in veth_qdiscs and "qdisc ingress" in veth_qdiscs, \
        veth_qdiscs
    ifbs = [e["ifname"] for e in node.ip_json("-d", "link", "show")
            if e.get("linkinfo", {}).get("info_kind") == "ifb"]
    assert len(ifbs) == 1, node.ip("-d", "link", "show")
    assert "rate 1Mbit" in node.run(["tc", "qdisc", "show", "dev", ifbs[0]]).stdout
    assert pod.run(["cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter"]).stdout.strip() == "2"

    out, _ = run_chain(conflist["plugins"], "CHECK", conflist, chain_path, prev_result=result, **kwargs)
    assert out.code == 0, out
    if version == "1.1.0":
        status_and_gc(conflist, chain_path, kwargs)
        assert weft.ipam_files() == ["10.244.1.2"]
        assert len([line for line in rules(node, "nat") if "--to-destination 10.244.1.2:80" in line]) == 1
        assert "qdisc tbf" in node.run(["tc", "qdisc", "show", "dev", host]).stdout
    out, _ = run_chain(conflist["plugins"], "DEL", conflist, chain_path, prev_result=result, **kwargs)
    assert out.code == 0, out
    assert weft.ipam_files() == []
    assert host not in {e["ifname"] for e in node.ip_json("link", "show")}
    assert not [line for line in rules(node, "nat") if "10.244.1.2" in line]
    assert not [e for e in node.ip_json("-d", "link", "show") if e.get("linkinfo", {}).get("info_kind") == "ifb"]


def test_weft_then_portmap_with_the_nftables_backend_of_plugins_1_9(weft, node, pods, installed, tmp_path):
    """portmap 1.9 can write nftables instead of iptables (`"backend": "nftables"`; it picks
    iptables when the key is absent, as the test above shows); plugins 1.1 have no such key.
    Its table lives beside weft's own masquerade table."""
    chain_path = f"{installed}/cni:{runtimes.cni_plugins_19()}"
    pod = pods()
    conflist = weft_chain(weft, "1.1.0", {**PORTMAP, "backend": "nftables"}, ipMasq=True)
    kwargs = dict(container_id="chain3", netns=pod.path, ifname="eth0", node=node,
                  extra_env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    out, result = run_chain(conflist["plugins"], "ADD", conflist, chain_path, **kwargs)
    assert out.code == 0, out

    def nft_tables():
        listing = json.loads(node.run(["nft", "-j", "list", "ruleset"]).stdout)["nftables"]
        return {(e["table"]["family"], e["table"]["name"]) for e in listing if "table" in e}

    def nft_mentions(text):
        return text in node.run(["nft", "list", "ruleset"]).stdout

    assert ("inet", "weft_weftnet") in nft_tables()
    assert nft_mentions("10.244.1.2") and not [line for line in rules(node, "nat") if "10.244.1.2" in line]
    host_port_reaches_pod(node, pod)
    out, _ = run_chain(conflist["plugins"], "CHECK", conflist, chain_path, prev_result=result, **kwargs)
    assert out.code == 0, out
    status_and_gc(conflist, chain_path, kwargs)
    assert nft_mentions("10.244.1.2")
    out, _ = run_chain(conflist["plugins"], "DEL", conflist, chain_path, prev_result=result, **kwargs)
    assert out.code == 0, out
    assert not nft_mentions("10.244.1.2") and weft.ipam_files() == []


def test_weft_then_firewall(weft, node, pods, reference, chain_path):
    """firewall needs ip6tables (it sets up both families), so it runs on the full PATH."""
    version = reference[1]
    pod = pods()
    conflist = weft_chain(weft, version, {"type": "firewall", "ingressPolicy": "same-bridge"})
    kwargs = dict(container_id="chain2", netns=pod.path, ifname="eth0", node=node,
                  extra_env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    out, result = run_chain(conflist["plugins"], "ADD", conflist, chain_path, **kwargs)
    assert out.code == 0, out
    assert result["cniVersion"] == version
    # the pod's address accepted in CNI-FORWARD, and same-bridge isolation keyed on weft's
    # bridge (of the result's host-side interfaces, the one that is not the veth)
    filtered = rules(node, "filter")
    forward = [line for line in filtered if line.startswith("-A CNI-FORWARD") and "10.244.1.2/32" in line]
    assert forward, "\n".join(filtered)
    jump = [line for line in filtered
            if line.startswith("-A CNI-ISOLATION-STAGE-1 ") and "-j CNI-ISOLATION-STAGE-2" in line]
    drop = [line for line in filtered if line.startswith("-A CNI-ISOLATION-STAGE-2 ") and line.endswith("-j DROP")]
    assert len(jump) == 1 and jump[0].startswith("-A CNI-ISOLATION-STAGE-1 -i cbr0 ! -o cbr0 "), "\n".join(filtered)
    assert len(drop) == 1 and drop[0].startswith("-A CNI-ISOLATION-STAGE-2 -o cbr0 "), "\n".join(filtered)
    out, _ = run_chain(conflist["plugins"], "CHECK", conflist, chain_path, prev_result=result, **kwargs)
    assert out.code == 0, out
    if version == "1.1.0":
        status_and_gc(conflist, chain_path, kwargs)
        assert weft.ipam_files() == ["10.244.1.2"]
        assert [line for line in rules(node, "filter") if "10.244.1.2/32" in line]
    out, _ = run_chain(conflist["plugins"], "DEL", conflist, chain_path, prev_result=result, **kwargs)
    assert out.code == 0, out
    assert weft.ipam_files() == []
    assert not [line for line in rules(node, "filter") if "10.244.1.2" in line]


def test_reference_bridge_with_weft_ipam(weft, node, pods, reference, chain_path):
    plugins, version = reference
    bridge = f"{plugins}/bridge"
    pod = pods()
    conf = {"cniVersion": version, "name": "weftnet", "type": "bridge", "bridge": "refbr0",
            "isGateway": True,
            "ipam": {"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
                     "ranges": [[{"subnet": "10.77.0.0/24"}]]}}
    out = weft("ADD", conf, pod, exe=bridge, cni_path=chain_path)
    assert out.code == 0, out
    assert out.json["cniVersion"] == version
    assert out.json["ips"][0]["address"] == "10.77.0.2/24"
    assert pod.run(["ping", "-c1", "-W2", "10.77.0.1"], check=False).returncode == 0
    assert weft.ipam_files() == ["10.77.0.2"]
    assert weft("CHECK", {**conf, "prevResult": out.json}, pod, exe=bridge, cni_path=chain_path).code == 0
    assert weft("DEL", conf, pod, exe=bridge, cni_path=chain_path).code == 0
    assert weft.ipam_files() == []


def test_weft_with_reference_host_local(weft, node, pods, reference, chain_path, tmp_path):
    version = reference[1]
    pod = pods()
    conf = weft.conf(version=version, ipam={"type": "host-local", "dataDir": str(tmp_path / "hl"),
                                            "ranges": [[{"subnet": "10.78.0.0/24"}]]})
    out = weft("ADD", conf, pod, cni_path=chain_path)
    assert out.code == 0, out
    assert out.json["cniVersion"] == version
    assert out.json["ips"][0]["address"] == "10.78.0.2/24"
    assert (tmp_path / "hl" / "weftnet" / "10.78.0.2").exists()
    assert weft("CHECK", {**conf, "prevResult": out.json}, pod, cni_path=chain_path).code == 0
    assert weft("DEL", conf, pod, cni_path=chain_path).code == 0
    assert not (tmp_path / "hl" / "weftnet" / "10.78.0.2").exists()
