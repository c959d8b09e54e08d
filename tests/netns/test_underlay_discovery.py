"""weftd's underlay discovery and RA handling in a real namespace (datapath/underlay.py,
datapath/sysctl.py): which address --iface picks, and accept_ra with forwarding on.

The oracle is the kernel: addresses are made with `ip addr` (a deprecated one with
preferred_lft 0, as the kernel marks an address whose router stopped advertising it)."""

import sys

from cni_plugin.datapath import underlay
from cni_plugin.datapath.netlink import open_agent

REPO = __file__.rsplit("/tests/", 1)[0]


def _wire(node, *addresses):
    node.run(["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0"])
    for address in addresses:
        node.run(["ip", "addr", "add", *address.split(), "dev", "eth0"])
    node.run(["ip", "link", "set", "eth0", "up"])
    node.run(["ip", "link", "set", "peer0", "up"])


def test_iface_discovery_skips_deprecated_and_link_local_ipv6(node):
    _wire(node, "fd00:9::5/64 nodad preferred_lft 0", "fd00:9::7/64 nodad", "fe80::99/64 nodad",
          "192.0.2.7/24")
    flags = {a["local"]: a for link in node.ip_json("addr", "show", "dev", "eth0") for a in link["addr_info"]}
    assert flags["fd00:9::5"].get("deprecated") is True  # the kernel's own view of the flag
    with open_agent(node.path) as nl:
        assert [str(a) if a else None for a in underlay.discover(nl, "eth0")] == ["192.0.2.7", "fd00:9::7"]


def test_iface_with_only_an_ipv6_address_gives_an_ipv6_only_underlay(node):
    _wire(node, "fd00:9::7/64 nodad")
    with open_agent(node.path) as nl:
        assert [str(a) if a else None for a in underlay.discover(nl, "eth0")] == [None, "fd00:9::7"]


def test_without_iface_each_family_comes_from_its_default_route(node):
    _wire(node, "fd00:9::7/64 nodad")
    node.run(["ip", "-6", "route", "add", "default", "via", "fd00:9::1", "dev", "eth0"])
    with open_agent(node.path) as nl:
        assert [str(a) if a else None for a in underlay.discover(nl, None)] == [None, "fd00:9::7"]


def test_nothing_to_discover_names_the_flags(node):
    _wire(node, "fe80::99/64 nodad")
    with open_agent(node.path) as nl:
        try:
            underlay.discover(nl, "eth0")
        except underlay.DatapathError as exc:
            assert "--public-ip or --public-ipv6" in str(exc) and "link-local" in str(exc)
        else:
            raise AssertionError("an interface with only a link-local address gave an underlay")


def _keep_accepting_ra(node) -> str:
    code = "from cni_plugin.datapath import sysctl; print(sysctl.keep_accepting_ra('eth0'))"
    return node.run([sys.executable, "-c", code], cwd=REPO).stdout.strip()


def _sysctl(node, key) -> str:
    return node.run(["cat", f"/proc/sys/net/ipv6/conf/{key}"]).stdout.strip()


def test_accept_ra_becomes_2_only_when_forwarding_is_on_and_it_was_1(node):
    _wire(node)
    assert _sysctl(node, "eth0/accept_ra") == "1"
    assert _keep_accepting_ra(node) == "False"  # forwarding off: RAs still accepted, nothing to do
    assert _sysctl(node, "eth0/accept_ra") == "1"
    node.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
    assert _keep_accepting_ra(node) == "True" and _sysctl(node, "eth0/accept_ra") == "2"
    node.run(["sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=0"])  # configured statically: left alone
    assert _keep_accepting_ra(node) == "False" and _sysctl(node, "eth0/accept_ra") == "0"
