"""weft with the Debian reference plugins (/usr/lib/cni), chained as libcni does."""

from lab.cni import path_without_ip6tables, run_chain

from cni_plugin.datapath.naming import host_veth_name


def test_weft_then_portmap_bandwidth_tuning(weft, node, pods, cni_path, tmp_path):
    pod = pods()
    conflist = {
        "cniVersion": "1.0.0",
        "name": "weftnet",
        "plugins": [
            {k: v for k, v in weft.conf().items() if k not in ("cniVersion", "name")},
            {"type": "portmap", "capabilities": {"portMappings": True},
             "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}},
            {"type": "bandwidth", "ingressRate": 1000000, "ingressBurst": 100000,
             "egressRate": 1000000, "egressBurst": 100000},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"}},
        ],
    }
    kwargs = dict(container_id="chain1", netns=pod.path, ifname="eth0", node=node,
                  extra_env={"PATH": path_without_ip6tables(tmp_path)})
    out, result = run_chain(conflist["plugins"], "ADD", conflist, cni_path, **kwargs)
    assert out.code == 0, out
    assert result["ips"][0]["address"] == "10.244.1.2/24"
    # portmap programmed DNAT for the pod, bandwidth shaped the host veth, tuning set the sysctl
    # portmap writes iptables rules (Debian's iptables is the nft variant, so iptables-save
    # reads them back): one DNAT of host port 8080 to the pod's port 80
    nat = node.run(["iptables-save", "-t", "nat"]).stdout.splitlines()
    dnat = [line for line in nat if "--dport 8080" in line and "--to-destination 10.244.1.2:80" in line]
    assert len(dnat) == 1, "\n".join(nat)
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

    out, _ = run_chain(conflist["plugins"], "CHECK", conflist, cni_path, prev_result=result, **kwargs)
    assert out.code == 0, out
    out, _ = run_chain(conflist["plugins"], "DEL", conflist, cni_path, prev_result=result, **kwargs)
    assert out.code == 0, out
    assert weft.ipam_files() == []
    assert host_veth_name("chain1", "eth0") not in {e["ifname"] for e in node.ip_json("link", "show")}


def test_reference_bridge_with_weft_ipam(weft, node, pods):
    pod = pods()
    conf = {"cniVersion": "1.0.0", "name": "weftnet", "type": "bridge", "bridge": "refbr0",
            "isGateway": True,
            "ipam": {"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
                     "ranges": [[{"subnet": "10.77.0.0/24"}]]}}
    out = weft("ADD", conf, pod, exe="/usr/lib/cni/bridge")
    assert out.code == 0, out
    assert out.json["ips"][0]["address"] == "10.77.0.2/24"
    assert pod.run(["ping", "-c1", "-W2", "10.77.0.1"], check=False).returncode == 0
    assert weft.ipam_files() == ["10.77.0.2"]
    assert weft("CHECK", {**conf, "prevResult": out.json}, pod, exe="/usr/lib/cni/bridge").code == 0
    assert weft("DEL", conf, pod, exe="/usr/lib/cni/bridge").code == 0
    assert weft.ipam_files() == []


def test_weft_with_reference_host_local(weft, node, pods, tmp_path):
    pod = pods()
    conf = weft.conf(ipam={"type": "host-local", "dataDir": str(tmp_path / "hl"),
                           "ranges": [[{"subnet": "10.78.0.0/24"}]]})
    out = weft("ADD", conf, pod)
    assert out.code == 0, out
    assert out.json["ips"][0]["address"] == "10.78.0.2/24"
    assert (tmp_path / "hl" / "weftnet" / "10.78.0.2").exists()
    assert weft("CHECK", {**conf, "prevResult": out.json}, pod).code == 0
    assert weft("DEL", conf, pod).code == 0
    assert not (tmp_path / "hl" / "weftnet" / "10.78.0.2").exists()
