"""conntrack.flush(), a released pod address's entries deleted, in both of its ways of
finding them: one dump of the namespace's whole table (when it holds few entries) and
kernel-filtered dumps per address (when it holds many).  Entries are made with the
`conntrack` tool inside a namespace of the test's own and read back with it: the
pod's own, one DNATed to it from a Service address, an IPv6 one, and other pods'
entries, which must stay."""

import sys

import pytest

from lab.cluster import REPO

pytestmark = pytest.mark.root

POD4, POD6 = "10.244.1.5", "fd10:244:1::5"
OTHER, THIRD, SERVICE = "10.244.1.6", "10.244.1.7", "10.96.0.10"

ENTRIES = {
    "opened by the pod": ["-s", POD4, "-d", OTHER, "-p", "tcp", "--sport", "40000", "--dport", "80",
                          "--state", "ESTABLISHED"],
    "DNATed to the pod": ["-s", OTHER, "-d", SERVICE, "-r", POD4, "-q", OTHER, "-p", "tcp", "--sport", "40001",
                          "--dport", "80", "--reply-port-src", "8080", "--reply-port-dst", "40001",
                          "--state", "ESTABLISHED"],
    "the pod's IPv6": ["-s", POD6, "-d", "fd10:244:1::6", "-p", "udp", "--sport", "5000", "--dport", "53"],
    "another pod's": ["-s", THIRD, "-d", OTHER, "-p", "tcp", "--sport", "40002", "--dport", "80",
                      "--state", "ESTABLISHED"],
    "another pod's, to a Service": ["-s", THIRD, "-d", SERVICE, "-r", OTHER, "-q", THIRD, "-p", "udp",
                                    "--sport", "5001", "--dport", "53", "--reply-port-src", "53",
                                    "--reply-port-dst", "5001"],
}
KEPT = ("another pod's", "another pod's, to a Service")

FLUSH = """
import ipaddress, sys
from cni_plugin.datapath import conntrack
conntrack.SMALL_TABLE = int(sys.argv[1])
print(conntrack.flush([ipaddress.ip_address(a) for a in sys.argv[2:]]))
"""


def listed(node) -> str:
    return node.run(["conntrack", "-L"], check=False).stdout


@pytest.mark.parametrize("small_table", [1_000_000, 0], ids=["one dump of the table", "filtered dumps"])
def test_flush_deletes_the_pods_entries_and_only_those(node, small_table):
    for args in ENTRIES.values():
        node.run(["conntrack", "-I", *args, "-t", "120"])
    before = listed(node)
    assert before.count("\n") == len(ENTRIES), before
    out = node.run([sys.executable, "-c", FLUSH, str(small_table), POD4, POD6], cwd=REPO)
    assert out.stdout.strip() == str(len(ENTRIES) - len(KEPT)), out
    after = listed(node)
    assert POD4 not in after and POD6 not in after, after
    assert after.count("\n") == len(KEPT) and "sport=40002" in after and "sport=5001" in after, after


def test_flush_of_an_address_with_no_entries_deletes_nothing(node):
    node.run(["conntrack", "-I", *ENTRIES["another pod's"], "-t", "120"])
    out = node.run([sys.executable, "-c", FLUSH, "1000000", POD4], cwd=REPO)
    assert out.stdout.strip() == "0"
    assert THIRD in listed(node)

