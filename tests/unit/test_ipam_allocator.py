"""cni_plugin.ipam.allocator: round robin, skipping, laziness, locating requested IPs."""

import ipaddress
import itertools

import pytest

from cni_plugin.cni.errors import INVALID_NETCONF, CniError
from cni_plugin.ipam import allocator, config

A = ipaddress.ip_address


def range_sets(*sets):
    conf = {"cniVersion": "1.1.0", "name": "n", "ipam": {"ranges": [list(s) for s in sets]}}
    return config.load(conf).range_sets


def strs(ips):
    return [str(ip) for ip in ips]


def test_walks_whole_range_skipping_gateway_network_broadcast():
    (rs,) = range_sets([{"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.0", "rangeEnd": "10.1.0.7"}])
    # .0 network, .1 gateway, .7 broadcast are never offered
    assert strs(allocator.candidates(rs)) == [f"10.1.0.{n}" for n in range(2, 7)]


def test_default_range_skips_default_gateway():
    (rs,) = range_sets([{"subnet": "10.1.0.0/29"}])
    assert strs(allocator.candidates(rs)) == [f"10.1.0.{n}" for n in range(2, 7)]


def test_gateway_in_the_middle_is_skipped():
    (rs,) = range_sets([{"subnet": "10.1.0.0/29", "gateway": "10.1.0.4"}])
    assert strs(allocator.candidates(rs)) == ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.5", "10.1.0.6"]


def test_round_robin_starts_after_last_reserved_and_wraps_once():
    (rs,) = range_sets([{"subnet": "10.1.0.0/29"}])
    got = strs(allocator.candidates(rs, A("10.1.0.4")))
    assert got == ["10.1.0.5", "10.1.0.6", "10.1.0.2", "10.1.0.3", "10.1.0.4"]


def test_last_reserved_at_range_end_wraps_to_start():
    (rs,) = range_sets([{"subnet": "10.1.0.0/29"}])
    assert strs(allocator.candidates(rs, A("10.1.0.6")))[:2] == ["10.1.0.2", "10.1.0.3"]


def test_last_reserved_outside_ranges_starts_at_the_beginning():
    (rs,) = range_sets([{"subnet": "10.1.0.0/29"}])
    assert strs(allocator.candidates(rs, A("192.168.0.1")))[0] == "10.1.0.2"
    assert strs(allocator.candidates(rs, A("fd00::1")))[0] == "10.1.0.2"


def test_multiple_ranges_are_walked_in_order_each_address_once():
    (rs,) = range_sets([
        {"subnet": "10.1.0.0/29"},
        {"subnet": "10.2.0.0/29", "rangeStart": "10.2.0.3", "rangeEnd": "10.2.0.4"},
    ])
    got = strs(allocator.candidates(rs, A("10.1.0.5")))
    assert got == ["10.1.0.6", "10.2.0.3", "10.2.0.4", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5"]
    assert len(got) == len(set(got))


def test_last_reserved_in_second_range_continues_there():
    (rs,) = range_sets([{"subnet": "10.1.0.0/29"}, {"subnet": "10.2.0.0/29"}])
    got = strs(allocator.candidates(rs, A("10.2.0.5")))
    assert got[:3] == ["10.2.0.6", "10.1.0.2", "10.1.0.3"]
    assert got[-1] == "10.2.0.5" and len(got) == 10


def test_free_addresses_skip_taken_ones():
    (rs,) = range_sets([{"subnet": "10.1.0.0/29"}])
    taken = {A("10.1.0.5"), A("10.1.0.2")}
    assert allocator.first_free(rs, taken.__contains__, A("10.1.0.4")) == A("10.1.0.6")
    assert strs(allocator.free_addresses(rs, taken.__contains__)) == ["10.1.0.3", "10.1.0.4", "10.1.0.6"]


def test_first_free_is_none_when_everything_is_taken():
    (rs,) = range_sets([{"subnet": "10.1.0.0/29"}])
    assert allocator.first_free(rs, lambda ip: True) is None


def test_ipv6_slash_64_is_walked_lazily():
    (rs,) = range_sets([{"subnet": "fd00::/64"}])
    first = strs(itertools.islice(allocator.candidates(rs), 3))
    asked = []

    def taken_first_thousand(ip):
        asked.append(ip)
        return int(ip) - int(A("fd00::")) <= 1000

    found = allocator.first_free(rs, taken_first_thousand)
    assert first == ["fd00::2", "fd00::3", "fd00::4"]  # ::1 is the gateway
    assert found == A("fd00::3e9")
    # lazily: exactly the candidates up to the first free one were looked at, in order
    assert len(asked) == 1000 and asked[0] == A("fd00::2") and asked[-1] == found


def test_ipv6_wraps_after_last_address():
    (rs,) = range_sets([{"subnet": "fd00::/64"}])
    got = strs(itertools.islice(allocator.candidates(rs, A("fd00::ffff:ffff:ffff:fffe")), 2))
    assert got == ["fd00::ffff:ffff:ffff:ffff", "fd00::2"]  # IPv6 has no broadcast


def test_locate_finds_range_set_and_range():
    sets = range_sets([{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}])
    rs, r = allocator.locate(sets, A("fd00::99"))
    assert rs.index == 1 and str(r.subnet) == "fd00::/64"


def test_locate_outside_every_range_names_ip_and_ranges():
    sets = range_sets([{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100"}])
    with pytest.raises(CniError) as caught:
        allocator.locate(sets, A("10.1.0.5"))
    assert caught.value.code == INVALID_NETCONF
    assert "10.1.0.5" in caught.value.msg
    assert "range set 0 (10.1.0.100-10.1.0.254)" in caught.value.msg


def test_locate_refuses_the_gateway():
    sets = range_sets([{"subnet": "10.1.0.0/24"}])
    with pytest.raises(CniError) as caught:
        allocator.locate(sets, A("10.1.0.1"))
    assert caught.value.code == INVALID_NETCONF
    assert "10.1.0.1" in caught.value.msg and "gateway" in caught.value.msg
