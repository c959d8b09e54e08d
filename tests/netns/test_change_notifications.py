"""The change-notification sockets that let a quiet reconcile skip its kernel reads,
and the schedule (agent/read_schedule.py) that decides each pass from them.

Each is opened in a fresh node namespace; changes are made there with nft, ip and
bridge, and changed() must say True exactly when something weft owns was touched
since the last call (and False again once drained); an overflowed or failed socket
is a change, and a full read still comes every resync interval."""

import socket

from cni_plugin.agent.read_schedule import FULL, PARTIAL, ReadSchedule
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


def test_kernel_changes_follow_both_vxlan_devices_of_a_dual_underlay_node(node):
    """weft.<VNI> and weft-v6.<VNI>: an FDB entry or neighbour removed by hand on either
    is a change the next pass reads (the IPv6-underlay device is no blind spot)."""
    node.run(["ip", "link", "add", "uplink", "type", "veth", "peer", "name", "uplink1"])
    node.run(["ip", "addr", "add", "fd00:9::1/64", "dev", "uplink", "nodad"])
    node.run(["ip", "link", "set", "uplink", "up"])
    node.run(["ip", "link", "add", "weft.1", "type", "vxlan", "id", "1", "dstport", "8472", "nolearning"])
    node.run(["ip", "link", "add", "weft-v6.1", "type", "vxlan", "id", "1", "dstport", "8472", "nolearning",
              "local", "fd00:9::1", "dev", "uplink"])
    for name in ("weft.1", "weft-v6.1"):
        node.run(["ip", "link", "set", name, "up"])
    indexes = tuple(node.ip_json("link", "show", name)[0]["ifindex"] for name in ("weft.1", "weft-v6.1"))
    ours = KernelChanges(indexes, netns_path=node.path)
    try:
        for device, dst in (("weft.1", "192.0.2.1"), ("weft-v6.1", "fd00:9::2")):
            node.run(["bridge", "fdb", "append", "0e:00:00:00:00:01", "dev", device, "dst", dst, "self", "permanent"])
            assert ours.changed() is True, device
            node.run(["bridge", "fdb", "del", "0e:00:00:00:00:01", "dev", device, "dst", dst, "self"])
            assert ours.changed() is True, device
            assert ours.changed() is False, device
    finally:
        ours.close()


def test_an_overflowed_socket_counts_as_a_change(node):
    """Nothing weft owns changes, but the socket lost messages (ENOBUFS): it cannot tell."""
    node.run(["ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1"])
    node.run(["ip", "link", "set", "other0", "up"])
    ours = KernelChanges(0x7fff, netns_path=node.path)
    try:
        ours.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # the kernel's minimum
        batch = "".join(f"route add 10.{n // 250}.{n % 250}.0/24 dev other0 proto static\n" for n in range(600))
        node.run(["ip", "-batch", "-"], input=batch)
        assert ours.changed() is True  # static routes only, but some notifications were lost
        assert ours.changed() is False
    finally:
        ours.close()


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_schedule_reads_on_notice_on_failure_and_every_resync_interval(node):
    clock, table, warnings = _Clock(), "weft_sched_test", []
    _nft(node, f"add table inet {table}")
    schedule = ReadSchedule("test", lambda: TableChanges("inet", table, netns_path=node.path), 60.0,
                            warn=warnings.append, clock=clock)
    try:
        first = schedule.next()
        assert (first.scope, first.why) == (FULL, "first")
        assert schedule.next().why == "first"  # not reported done: still due
        schedule.full_read_done(first)
        assert schedule.next() is None  # quiet: nothing to read
        _nft(node, f"add chain inet {table} c")
        notified = schedule.next()
        assert (notified.scope, notified.why) == (FULL, "notified")
        schedule.full_read_done(notified)
        clock.now += 59.0
        assert schedule.next() is None
        clock.now += 1.0  # --resync-interval after the last full read, nothing notified
        resync = schedule.next()
        assert (resync.scope, resync.why) == (FULL, "resync")
        schedule.full_read_done(resync)
        assert schedule.next() is None
        schedule.again()  # a failed write: the next pass reads
        retry = schedule.next()
        assert retry.why == "retry"
        schedule.full_read_done(retry)
        # the notification socket is lost: a change, and it is opened again
        schedule.follower.sock.close()
        lost = schedule.next()
        assert (lost.scope, lost.why) == (FULL, "notifications lost") and warnings
        schedule.full_read_done(lost)
        assert schedule.next() is None
        _nft(node, f"delete chain inet {table} c")
        assert schedule.next().why == "notified"  # the new socket follows the table
        assert schedule.status()["full"] == 7 and schedule.status()["skipped"] == 4
    finally:
        schedule.close()


def test_entries_without_notifications_are_read_every_quiet_pass(node):
    clock = _Clock()
    schedule = ReadSchedule("overlay", lambda: KernelChanges(0x7fff, netns_path=node.path), 300.0,
                            unnotified=True, clock=clock)
    try:
        schedule.full_read_done(schedule.next())
        for _ in range(3):
            read = schedule.next()
            assert (read.scope, read.why) == (PARTIAL, "unnotified")
        assert schedule.status()["quietSinceFull"] == 3
        clock.now += 300.0
        assert schedule.next().scope == FULL
    finally:
        schedule.close()


def test_without_a_notification_socket_every_pass_reads_in_full(node):
    def refused():
        raise OSError("no netlink here")

    warnings = []
    schedule = ReadSchedule("masquerade", refused, 300.0, warn=warnings.append, clock=_Clock())
    schedule.full_read_done(schedule.next())
    assert schedule.next().why == "unfollowed" and "every reconcile pass reads" in warnings[0]
