"""Bad input and injected failures through the real executables: error JSON on
stdout, a non-zero exit, and nothing left behind (no IP, no link, no table)."""

import pytest

from cni_plugin.datapath.naming import host_veth_name


def assert_nothing_left(weft, node, cid="c1"):
    assert weft.ipam_files() == []
    links = {entry["ifname"] for entry in node.ip_json("link", "show")}
    assert host_veth_name(cid, "eth0") not in links


@pytest.mark.parametrize("subnet,needle", [
    ("10.1.0.0/33", "10.1.0.0/33"),     # invalid CIDR
    ("10.1.0.5/24", "10.1.0.5/24"),     # host bits set
    ("10.1.0.0/31", "10.1.0.0/31"),     # no room for hosts
    ("10.1.0.0/32", "10.1.0.0/32"),
])
def test_bad_subnet_is_code_7(weft, node, pods, subnet, needle):
    conf = weft.conf(ipam={"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
                           "ranges": [[{"subnet": subnet}]]})
    out = weft("ADD", conf, pods())
    assert out.code != 0 and out.json["code"] == 7 and needle in out.json["msg"], out
    assert_nothing_left(weft, node)


def test_overlapping_ranges_are_code_7(weft, node, pods):
    conf = weft.conf(ipam={"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
                           "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}]]})
    out = weft("ADD", conf, pods())
    assert out.json["code"] == 7 and "overlap" in out.json["msg"], out
    assert_nothing_left(weft, node)


def test_netns_that_is_not_a_namespace(weft, node, tmp_path):
    fake = tmp_path / "not-a-netns"
    fake.write_text("")

    class Fake:
        path = str(fake)

    out = weft("ADD", weft.conf(), Fake())
    assert out.json["code"] == 8 and "is not a namespace" in out.json["msg"], out
    assert_nothing_left(weft, node)


def test_missing_netns_path(weft, node):
    class Gone:
        path = "/run/netns/weft-does-not-exist"

    out = weft("ADD", weft.conf(), Gone())
    assert out.json["code"] == 8 and "/run/netns/weft-does-not-exist" in out.json["msg"], out
    assert_nothing_left(weft, node)


def test_plugins_own_netns_is_code_8(weft, node):
    out = weft("ADD", weft.conf(), node)  # the plugin runs inside `node`
    assert out.json["code"] == 8 and "own network namespace" in out.json["msg"], out
    assert_nothing_left(weft, node)


def test_unknown_ipam_type_names_the_path(weft, node, pods):
    out = weft("ADD", weft.conf(ipam={"type": "no-such-ipam", "ranges": [[{"subnet": "10.1.0.0/24"}]]}), pods())
    assert out.json["code"] == 7 and "no-such-ipam" in out.json["msg"] and "CNI_PATH" in out.json["msg"]
    assert_nothing_left(weft, node)


def test_failure_after_ipam_add_rolls_back_interface_clash(weft, node, pods):
    """The container already has an eth0: veth creation fails after IPAM ADD."""
    pod = pods()
    pod.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer"])
    out = weft("ADD", weft.conf(), pod)
    assert out.code != 0 and out.json["code"] == 103, out
    assert_nothing_left(weft, node)
    assert {e["ifname"] for e in pod.ip_json("link", "show")} == {"lo", "eth0", "eth0peer"}


def test_failure_after_ipam_add_rolls_back_bridge_clash(weft, node, pods):
    """A non-bridge link holds the bridge's name: refused after IPAM ADD, undone."""
    node.run(["ip", "link", "add", "cbr0", "type", "veth", "peer", "name", "cbr0peer"])
    out = weft("ADD", weft.conf(), pods())
    assert out.json["code"] == 103 and "not a bridge" in out.json["msg"], out
    assert_nothing_left(weft, node)


def test_failure_in_container_routes_rolls_back(weft, node, pods):
    """An IPAM route whose gateway is unreachable fails inside the container."""
    conf = weft.conf(ipMasq=True, ipam={"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
                                        "ranges": [[{"subnet": "10.244.1.0/24"}]],
                                        "routes": [{"dst": "10.50.0.0/16", "gw": "192.0.2.1"}]})
    pod = pods()
    out = weft("ADD", conf, pod)
    assert out.code != 0, out
    assert_nothing_left(weft, node)
    assert {e["ifname"] for e in pod.ip_json("link", "show")} == {"lo"}
    assert node.run(["nft", "list", "table", "inet", "weft_weftnet"], check=False).returncode != 0
