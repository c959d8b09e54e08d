"""With no ipam.ranges, weft takes the node's lease from weftd's subnet file."""

import ipaddress

from cni_plugin.subnet import subnet_file


def write_lease(path, ipv6=False, mtu=1450, ipmasq=True):
    subnet_file.write(str(path), subnet_file.SubnetLease(
        network=ipaddress.IPv4Network("10.244.0.0/16"),
        subnet=ipaddress.IPv4Interface("10.244.3.1/24"),
        mtu=mtu, ipmasq=ipmasq,
        ipv6_network=ipaddress.IPv6Network("fd00:10:244::/48") if ipv6 else None,
        ipv6_subnet=ipaddress.IPv6Interface("fd00:10:244:3::1/64") if ipv6 else None,
    ))


def lease_conf(weft, path, version="1.0.0"):
    return weft.conf(version, subnetFile=str(path),
                     ipam={"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam"})


def test_ranges_mtu_masq_and_cluster_route_from_subnet_file(weft, node, pods, tmp_path):
    path = tmp_path / "weftnet.env"
    write_lease(path)
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    pod = pods()
    conf = lease_conf(weft, path)
    out = weft("ADD", conf, pod)
    assert out.code == 0, out
    assert out.json["ips"][0]["address"] == "10.244.3.2/24"
    assert {"dst": "10.244.0.0/16", "gw": "10.244.3.1"} in out.json["routes"]
    assert pod.ip_json("link", "show", "eth0")[0]["mtu"] == 1450
    table = node.run(["nft", "list", "table", "inet", "weft_weftnet"]).stdout
    # node-wide: the node's subnet is masqueraded, the cluster network is not
    assert "10.244.0.0/16" in table and "10.244.3.0/24" in table and "10.244.3.2" not in table
    assert weft("CHECK", {**conf, "prevResult": out.json}, pod).code == 0
    assert weft("STATUS", {**conf, "cniVersion": "1.1.0"}).code == 0
    path.unlink()  # DEL works without the lease
    assert weft("DEL", conf, pod).code == 0, "DEL must not need the subnet file"
    assert weft.ipam_files() == []


def test_dual_stack_lease_gives_both_families(weft, node, pods, tmp_path):
    path = tmp_path / "weftnet.env"
    write_lease(path, ipv6=True, ipmasq=False)
    a, b = pods(), pods()
    ra = weft("ADD", lease_conf(weft, path), a, cid="a")
    rb = weft("ADD", lease_conf(weft, path), b, cid="b")
    assert ra.code == 0 and rb.code == 0, (ra, rb)
    assert [ip["address"] for ip in ra.json["ips"]] == ["10.244.3.2/24", "fd00:10:244:3::2/64"]
    routes = {r["dst"] for r in ra.json["routes"]}
    assert {"0.0.0.0/0", "::/0", "10.244.0.0/16", "fd00:10:244::/48"} <= routes
    six = {a["local"] for e in a.ip_json("-6", "addr", "show", "dev", "eth0") for a in e["addr_info"]}
    assert "fd00:10:244:3::2" in six
    assert a.run(["ping", "-6", "-c1", "-W3", "fd00:10:244:3::3"], check=False).returncode == 0
    assert a.run(["ping", "-c1", "-W3", "10.244.3.3"], check=False).returncode == 0
    assert weft("CHECK", {**lease_conf(weft, path), "prevResult": ra.json}, a, cid="a").code == 0


def test_malformed_subnet_file_is_named(weft, node, pods, tmp_path):
    path = tmp_path / "weftnet.env"
    path.write_text("WEFT_NETWORK=banana\nWEFT_SUBNET=10.244.3.1/24\n")
    out = weft("ADD", lease_conf(weft, path), pods())
    assert out.json["code"] == 11 and str(path) in out.json["msg"] and "WEFT_NETWORK" in out.json["msg"]
    assert weft.ipam_files() == []


def write_ipv6_only_lease(path):
    subnet_file.write(str(path), subnet_file.SubnetLease(
        network=None, subnet=None, mtu=1430, ipmasq=True,
        ipv6_network=ipaddress.IPv6Network("fd10:224::/48"),
        ipv6_subnet=ipaddress.IPv6Interface("fd10:224:0:5::1/64")))


def test_ipv6_only_lease_gives_only_ipv6_usable_at_once(weft, node, pods, tmp_path):
    """No IPv4 anywhere in the pod; the first packet after ADD (no wait) reaches the
    gateway and another pod: addresses are not left tentative by DAD."""
    path = tmp_path / "weftnet.env"
    write_ipv6_only_lease(path)
    a, b = pods(), pods()
    ra = weft("ADD", lease_conf(weft, path), a, cid="a")
    rb = weft("ADD", lease_conf(weft, path), b, cid="b")
    assert ra.code == 0 and rb.code == 0, (ra, rb)
    assert [ip["address"] for ip in ra.json["ips"]] == ["fd10:224:0:5::2/64"]
    assert {r["dst"] for r in ra.json["routes"]} == {"::/0", "fd10:224::/48"}
    assert not any(e.get("addr_info") for e in a.ip_json("-4", "addr", "show", "dev", "eth0"))
    assert a.ip_json("-4", "route", "show") == []
    assert b.run(["ping", "-6", "-c1", "-W3", "fd10:224:0:5::2"], check=False).returncode == 0
    assert a.run(["ping", "-6", "-c1", "-W3", "fd10:224:0:5::1"], check=False).returncode == 0
    flags = [i for e in a.ip_json("-6", "addr", "show", "dev", "eth0") for i in e["addr_info"]
             if i["local"] == "fd10:224:0:5::2"]
    assert flags and not flags[0].get("tentative") and not flags[0].get("dadfailed")
    table = node.run(["nft", "list", "table", "inet", "weft_weftnet"]).stdout
    assert "fd10:224:0:5::/64" in table and "fd10:224::/48" in table
    assert weft("CHECK", {**lease_conf(weft, path), "prevResult": ra.json}, a, cid="a").code == 0


def test_ipv4_ranges_on_an_ipv6_only_network_are_refused_before_anything_is_built(weft, node, pods, tmp_path):
    path = tmp_path / "weftnet.env"
    write_ipv6_only_lease(path)
    conf = weft.conf(subnetFile=str(path), ipam={
        "type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
        "ranges": [[{"subnet": "fd10:224:0:5::/64"}], [{"subnet": "10.244.7.0/24"}]]})
    links_before = {e["ifname"] for e in node.ip_json("link", "show")}
    out = weft("ADD", conf, pods())
    assert out.code == 1 and out.json["code"] == 7, out
    assert "ipam.ranges[1][0].subnet '10.244.7.0/24'" in out.json["msg"] and "IPv6-only" in out.json["msg"]
    assert weft.ipam_files() == []
    assert {e["ifname"] for e in node.ip_json("link", "show")} == links_before, "a bridge or veth was built"
