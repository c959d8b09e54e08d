"""The change-notification sockets that let a quiet reconcile skip its kernel reads.

Each is opened in a fresh node namespace; changes are made there with nft, ip and
bridge, and changed() must say True exactly when something weft owns was touched
since the last call (and False again once drained)."""

from cni_plugin.datapath.changes import KernelChanges, TableChanges
from cni_plugin.datapath.constants import WEFT_RTPROT

TABLE = "weft-masq-testnet"


def _nft(node, *commands):
    node.run(["nft", "-f", "-"], input="\n".join(commands) + "\n")


def test_table_changes_name_only_the_followed_table(node):
    ours = TableChanges("inet", TABLE, netns_path=node.path)
    try:
        assert ours.changed() is False
        _nft(node, f"add table inet {TABLE}")
        assert ours.changed() is True
        assert ours.changed() is False  # drained
        # another table, and our name in another family: not ours
        _nft(node, "add table inet other", "add set inet other s { type ipv4_addr; }",
             "add element inet other s { 10.0.0.1 }", f"add table ip {TABLE}")
        assert ours.changed() is False
        # a set, an element, a chain, a rule, an element removed, the table deleted: each counts
        for command in (f"add set inet {TABLE} src4 {{ type ipv4_addr; flags interval; }}",
                        f"add element inet {TABLE} src4 {{ 10.244.1.0/24 }}",
                        f"add chain inet {TABLE} post {{ type nat hook postrouting priority 100; }}",
                        f"add rule inet {TABLE} post ip saddr @src4 masquerade",
                        f"delete element inet {TABLE} src4 {{ 10.244.1.0/24 }}",
                        f"delete table inet {TABLE}"):
            _nft(node, command)
            assert ours.changed() is True, command
            assert ours.changed() is False, command
    finally:
        ours.close()


def test_kernel_changes_name_only_the_device_and_weft_routes(node):
    node.run(["ip", "link", "add", "weft.1", "type", "vxlan", "id", "1", "dstport", "8472", "nolearning"])
    node.run(["ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1"])
    for name in ("weft.1", "other0", "other1"):
        node.run(["ip", "link", "set", name, "up"])
    index = node.ip_json("link", "show", "weft.1")[0]["ifindex"]
    ours = KernelChanges(index, netns_path=node.path)
    try:
        assert ours.changed() is False
        # another device's neighbour, a route of another protocol: not ours
        node.run(["ip", "neigh", "add", "10.9.0.2", "lladdr", "0e:00:00:00:00:02", "dev", "other0",
                  "nud", "permanent"])
        node.run(["ip", "route", "add", "10.9.0.0/24", "dev", "other0", "proto", "static"])
        assert ours.changed() is False
        for command in (["ip", "route", "add", "10.8.0.0/24", "dev", "other0", "proto", str(WEFT_RTPROT)],
                        ["ip", "neigh", "add", "10.8.0.1", "lladdr", "0e:00:00:00:00:01", "dev", "weft.1",
                         "nud", "permanent"],
                        ["bridge", "fdb", "append", "0e:00:00:00:00:01", "dev", "weft.1", "dst", "192.0.2.1", "self",
                         "permanent"],
                        ["ip", "link", "set", "weft.1", "mtu", "1400"]):
            node.run(command)
            assert ours.changed() is True, command
            assert ours.changed() is False, command
    finally:
        ours.close()
