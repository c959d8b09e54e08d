"""cni_plugin.ipam.config: defaults, legacy keys, and every validation error."""

import copy
import ipaddress

import pytest

from cni_plugin.cni.errors import INVALID_NETCONF, CniError
from cni_plugin.ipam import config

A = ipaddress.ip_address


def netconf(ipam=None, **top):
    conf = {"cniVersion": "1.1.0", "name": "weft"}
    if ipam is not None:
        conf["ipam"] = ipam
    conf.update(top)
    return conf


def ranges_conf(*range_sets, **extra):
    return netconf({"type": "weft-ipam", "ranges": [list(s) for s in range_sets], **extra})


def test_defaults_for_ipv4_range():
    cfg = config.load(ranges_conf([{"subnet": "10.1.0.0/24"}]))
    (r,) = cfg.range_sets[0].ranges
    assert (r.start, r.end, r.gateway) == (A("10.1.0.1"), A("10.1.0.254"), A("10.1.0.1"))
    assert cfg.data_dir == "/var/lib/cni/networks"
    assert cfg.store_dir == "/var/lib/cni/networks/weft"
    assert cfg.routes == () and cfg.resolv_conf is None


def test_defaults_for_ipv6_range_end_at_last_address():
    cfg = config.load(ranges_conf([{"subnet": "fd00:1::/120"}]))
    (r,) = cfg.range_sets[0].ranges
    assert (r.start, r.end, r.gateway) == (A("fd00:1::1"), A("fd00:1::ff"), A("fd00:1::1"))


def test_explicit_values_are_kept():
    cfg = config.load(ranges_conf([{
        "subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10",
        "rangeEnd": "10.1.0.20", "gateway": "10.1.0.254",
    }], dataDir="/srv/ipam"))
    (r,) = cfg.range_sets[0].ranges
    assert (r.start, r.end, r.gateway) == (A("10.1.0.10"), A("10.1.0.20"), A("10.1.0.254"))
    assert cfg.store_dir == "/srv/ipam/weft"


def test_dual_stack_range_sets_in_order():
    cfg = config.load(ranges_conf([{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]))
    assert [s.version for s in cfg.range_sets] == [4, 6]
    assert [s.index for s in cfg.range_sets] == [0, 1]


def test_legacy_keys_form_range_set_zero_before_ranges():
    cfg = config.load(netconf({
        "subnet": "10.9.0.0/24", "rangeStart": "10.9.0.5", "gateway": "10.9.0.1",
        "ranges": [[{"subnet": "fd00::/64"}]],
    }))
    assert [str(s.ranges[0].subnet) for s in cfg.range_sets] == ["10.9.0.0/24", "fd00::/64"]
    assert cfg.range_sets[0].ranges[0].start == A("10.9.0.5")


def test_routes_are_normalized():
    cfg = config.load(ranges_conf(
        [{"subnet": "10.1.0.0/24"}],
        routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.254"}],
    ))
    assert cfg.routes == ({"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.254"})


def test_describe_names_set_and_ranges():
    cfg = config.load(ranges_conf(
        [{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.2"}, {"subnet": "10.2.0.0/24"}]
    ))
    assert cfg.range_sets[0].describe() == "range set 0 (10.1.0.2-10.1.0.254, 10.2.0.1-10.2.0.254)"


GOOD = [{"subnet": "10.1.0.0/24"}]

# (ipam section or a function of it, substrings the message must contain)
ERRORS = {
    "no ranges": ({"type": "weft-ipam"}, ["ipam has no ranges"]),
    "ranges not a list": ({"ranges": {"subnet": "10.1.0.0/24"}}, ["ipam.ranges must be a list"]),
    "range set not a list": ({"ranges": [{"subnet": "10.1.0.0/24"}]}, ["ipam.ranges[0] must be a list"]),
    "empty range set": ({"ranges": [GOOD, []]}, ["ipam.ranges[1] is empty"]),
    "range not an object": ({"ranges": [["10.1.0.0/24"]]}, ["ipam.ranges[0][0] must be an object"]),
    "missing subnet": ({"ranges": [[{"gateway": "10.1.0.1"}]]}, ["ipam.ranges[0][0].subnet is required"]),
    "subnet not a string": ({"ranges": [[{"subnet": 10}]]}, ["ipam.ranges[0][0].subnet must be a string"]),
    "invalid CIDR": (
        {"ranges": [GOOD + [{"subnet": "10.2.0.0/33"}]]},
        ['ipam.ranges[0][1].subnet "10.2.0.0/33" is not a valid CIDR'],
    ),
    "no prefix": ({"ranges": [[{"subnet": "10.1.0.0"}]]}, ['subnet "10.1.0.0" is not a valid CIDR']),
    "garbage CIDR": ({"ranges": [[{"subnet": "ten/8"}]]}, ['"ten/8" is not a valid CIDR']),
    "host bits": (
        {"ranges": [[{"subnet": "10.1.0.5/24"}]]},
        ['ipam.ranges[0][0].subnet "10.1.0.5/24" has host bits set', "10.1.0.0/24"],
    ),
    "ipv4 /31": ({"ranges": [[{"subnet": "10.1.0.0/31"}]]}, ['"10.1.0.0/31" is too small']),
    "ipv4 /32": ({"ranges": [[{"subnet": "10.1.0.7/32"}]]}, ['"10.1.0.7/32" is too small']),
    "ipv6 /127": ({"ranges": [[{"subnet": "fd00::/127"}]]}, ['"fd00::/127" is too small']),
    "ipv6 /128": ({"ranges": [[{"subnet": "fd00::1/128"}]]}, ['"fd00::1/128" is too small']),
    "start outside": (
        {"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.1"}]]},
        ['ipam.ranges[0][0].rangeStart "10.2.0.1" is not inside subnet 10.1.0.0/24'],
    ),
    "end outside": (
        {"ranges": [[{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.1.0"}]]},
        ['ipam.ranges[0][0].rangeEnd "10.1.1.0" is not inside subnet 10.1.0.0/24'],
    ),
    "gateway outside": (
        {"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.0.0.1"}]]},
        ['ipam.ranges[0][0].gateway "10.0.0.1" is not inside subnet 10.1.0.0/24'],
    ),
    "gateway other family": (
        {"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "fd00::1"}]]},
        ['gateway "fd00::1" is not inside subnet 10.1.0.0/24'],
    ),
    "gateway is network address": (
        {"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.0"}]]},
        ["ipam.ranges[0][0].gateway 10.1.0.0 is the network address"],
    ),
    "gateway is broadcast": (
        {"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.255"}]]},
        ["ipam.ranges[0][0].gateway 10.1.0.255 is the broadcast address"],
    ),
    "start not an IP": (
        {"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "ten"}]]},
        ['ipam.ranges[0][0].rangeStart "ten" is not a valid IP address'],
    ),
    "start not a string": (
        {"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": 5}]]},
        ["ipam.ranges[0][0].rangeStart must be a string"],
    ),
    "start after end": (
        {"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9", "rangeEnd": "10.1.0.3"}]]},
        ["ipam.ranges[0][0].rangeStart 10.1.0.9 is after ipam.ranges[0][0].rangeEnd 10.1.0.3"],
    ),
    "overlap within a set": (
        {"ranges": [GOOD + [{"subnet": "10.1.0.0/25"}]]},
        ["ipam.ranges[0][1] (10.1.0.1-10.1.0.126) overlaps ipam.ranges[0][0] (10.1.0.1-10.1.0.254)"],
    ),
    "overlap across sets": (
        {"ranges": [GOOD, [{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.200"}]]},
        ["ipam.ranges[1][0] (10.1.0.200-10.1.0.254) overlaps ipam.ranges[0][0]"],
    ),
    "overlap with legacy": (
        {"subnet": "10.1.0.0/16", "ranges": [GOOD]},
        ["ipam.ranges[0][0]", "overlaps ipam (10.1.0.1-10.1.255.254)"],
    ),
    "mixed families": (
        {"ranges": [GOOD + [{"subnet": "fd00::/64"}]]},
        ["ipam.ranges[0] mixes address families", "ipam.ranges[0][1].subnet is IPv6"],
    ),
    "legacy invalid": ({"subnet": "10.1.0.0/99"}, ['ipam.subnet "10.1.0.0/99" is not a valid CIDR']),
    "routes not a list": (
        {"ranges": [GOOD], "routes": {"dst": "0.0.0.0/0"}}, ["ipam.routes must be a list"],
    ),
    "route without dst": (
        {"ranges": [GOOD], "routes": [{"gw": "10.1.0.1"}]}, ["ipam.routes[0].dst is required"],
    ),
    "route bad dst": (
        {"ranges": [GOOD], "routes": [{"dst": "0.0.0.0/0"}, {"dst": "nowhere"}]},
        ['ipam.routes[1].dst "nowhere" is not a valid CIDR'],
    ),
    "route bad gw": (
        {"ranges": [GOOD], "routes": [{"dst": "0.0.0.0/0", "gw": "x"}]},
        ['ipam.routes[0].gw "x" is not a valid IP address'],
    ),
    "route gw family": (
        {"ranges": [GOOD], "routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]},
        ["ipam.routes[0].gw fd00::1 is not of the same address family as dst 0.0.0.0/0"],
    ),
    "dataDir relative": (
        {"ranges": [GOOD], "dataDir": "state"}, ['ipam.dataDir "state" must be an absolute path'],
    ),
    "dataDir wrong type": ({"ranges": [GOOD], "dataDir": 1}, ["ipam.dataDir must be a string"]),
    "resolvConf wrong type": ({"ranges": [GOOD], "resolvConf": ["x"]}, ["ipam.resolvConf must be a string"]),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_invalid_configuration(case):
    ipam, expected = ERRORS[case]
    with pytest.raises(CniError) as caught:
        config.load(netconf(copy.deepcopy(ipam)))
    assert caught.value.code == INVALID_NETCONF
    for fragment in expected:
        assert fragment in caught.value.msg


def test_missing_ipam_section():
    with pytest.raises(CniError) as caught:
        config.load(netconf())
    assert caught.value.code == INVALID_NETCONF
    assert caught.value.msg == "network configuration has no ipam section"


def test_ipam_section_not_an_object():
    with pytest.raises(CniError) as caught:
        config.load(netconf("host-local"))
    assert caught.value.code == INVALID_NETCONF
    assert "ipam must be an object" in caught.value.msg


def test_resolv_conf_is_parsed(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text(
        "# comment\n; another\nnameserver 10.96.0.10\nnameserver fd00::a\n"
        "domain cluster.local\nsearch a.local b.local\nsearch svc.cluster.local cluster.local\n"
        "options ndots:5\noptions edns0\n"
    )
    cfg = config.load(ranges_conf(GOOD, resolvConf=str(path)))
    assert config.load_dns(cfg.resolv_conf) == {
        "nameservers": ["10.96.0.10", "fd00::a"],
        "domain": "cluster.local",
        "search": ["svc.cluster.local", "cluster.local"],
        "options": ["ndots:5", "edns0"],
    }


def test_resolv_conf_leaves_out_empty_keys():
    assert config.parse_resolv_conf("nameserver 1.1.1.1\n") == {"nameservers": ["1.1.1.1"]}
    assert config.load_dns(None) == {}


def test_unreadable_resolv_conf_names_the_path(tmp_path):
    missing = str(tmp_path / "nope.conf")
    with pytest.raises(CniError) as caught:
        config.load_dns(missing)
    assert caught.value.code == INVALID_NETCONF
    assert missing in caught.value.msg and "ipam.resolvConf" in caught.value.msg
