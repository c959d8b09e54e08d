"""The hot-path rtnetlink client agrees with iproute2 about the links it reads."""

from cni_plugin.datapath.rtnl import Rtnl


def test_links_read_as_ip_shows_them(node):
    node.run(["ip", "link", "add", "tbr0", "mtu", "1400", "type", "bridge"])
    node.run(["ip", "link", "add", "tv0", "mtu", "1400", "type", "veth", "peer", "name", "tv1"])
    node.run(["ip", "link", "set", "tv0", "master", "tbr0", "up"])
    shown = {e["ifname"]: e for e in node.ip_json("-d", "link", "show")}
    with Rtnl(node.path) as rt:
        links = {link.name: link for link in rt.links()}
        bridge, veth = rt.link("tbr0"), rt.link("tv0")
        assert rt.link("nope") is None
    assert set(links) == set(shown)
    assert (bridge.kind, bridge.mtu, bridge.index) == ("bridge", 1400, shown["tbr0"]["ifindex"])
    assert (veth.kind, veth.master, veth.up) == ("veth", bridge.index, True)
    assert veth.address == shown["tv0"]["address"] and links["lo"].kind == ""
    assert links["tv1"].master is None and not links["tv1"].up
