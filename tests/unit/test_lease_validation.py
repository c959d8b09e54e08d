"""Lease validation (pure): what may be programmed, oldest wins, per-backend data checks,
config changes."""

import ipaddress
import json
import random
import subprocess
import sys

import pytest

from cni_plugin.backends.base import BackendDataError
from cni_plugin.backends.vxlan import Vxlan, VxlanConfig, VxlanData
from cni_plugin.subnet import validation
from cni_plugin.subnet.lease import NetworkConfig
from cni_plugin.subnet.registry import LeaseRow

CONFIG = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/16", "Backend": {"VNI": 1}}))


def value(public_ip="192.168.100.1", mac="02:00:00:00:00:01", vni=1, node="n1", backend="vxlan", **more):
    raw = {"PublicIP": public_ip, "NodeName": node, "BackendType": backend,
           "BackendData": {"VNI": vni, "VtepMAC": mac}, **more}
    return json.dumps(raw)


def row(key, created, **kw):
    return LeaseRow(key, value(**kw), 0, created)


def test_good_leases_are_all_valid():
    rows = [row("10.244.1.0-24", 5, node="a", mac="02:00:00:00:00:0a"),
            row("10.244.2.0-24", 6, node="b", mac="02:00:00:00:00:0b")]
    verdict = validation.validate(CONFIG, rows)
    assert list(verdict.valid) == ["10.244.1.0-24", "10.244.2.0-24"] and verdict.refused == {}


@pytest.mark.parametrize("key,kw,reason,words", [
    ("10.244.0.0-16", {}, validation.SUBNET_LENGTH, "SubnetLen is 24"),
    ("10.244.3.0-26", {}, validation.SUBNET_LENGTH, "/26"),
    ("10.99.1.0-24", {}, validation.OUTSIDE_NETWORK, "outside Network 10.244.0.0/16"),
    ("10.244.3.0-24", {"public_ip": "127.0.0.1"}, validation.PUBLIC_IP, "loopback"),
    ("10.244.3.0-24", {"public_ip": "0.0.0.0"}, validation.PUBLIC_IP, "unspecified"),
    ("10.244.3.0-24", {"public_ip": "224.0.0.5"}, validation.PUBLIC_IP, "multicast"),
    ("10.244.3.0-24", {"public_ip": "255.255.255.255"}, validation.PUBLIC_IP, "broadcast"),
    ("10.244.3.0-24", {"public_ip": "169.254.3.3"}, validation.PUBLIC_IP, "link-local"),
    ("10.244.3.0-24", {"public_ip": "240.1.2.3"}, validation.PUBLIC_IP, "reserved"),
    ("10.244.3.0-24", {"public_ip": "10.244.9.9"}, validation.PUBLIC_IP, "inside the cluster network"),
    ("10.244.3.0-24", {"mac": "ff:ff:ff:ff:ff:ff"}, validation.BACKEND_DATA, "broadcast"),
    ("10.244.3.0-24", {"mac": "01:00:5e:00:00:01"}, validation.BACKEND_DATA, "multicast"),
    ("10.244.3.0-24", {"mac": "33:33:00:00:00:01"}, validation.BACKEND_DATA, "multicast"),
    ("10.244.3.0-24", {"mac": "00:00:00:00:00:00"}, validation.BACKEND_DATA, "all zeros"),
    ("10.244.3.0-24", {"mac": ""}, validation.BACKEND_DATA, "no VtepMAC"),
    ("10.244.3.0-24", {"vni": 7}, validation.BACKEND_DATA, "VNI 7"),
    ("10.244.3.0-24", {"backend": "host-gw"}, validation.BACKEND_TYPE, "host-gw"),
    ("10.244.3.0-24", {"public_ip": "not an ip"}, validation.UNREADABLE, "unusable value"),
])
def test_a_lease_is_refused_with_its_reason(key, kw, reason, words):
    verdict = validation.validate(CONFIG, [row("10.244.1.0-24", 3), row(key, 9, node="bad", **kw)])
    assert list(verdict.valid) == ["10.244.1.0-24"], "the good lease must stay valid"
    refusal = verdict.refused[key]
    assert refusal.reason == reason and words in refusal.detail and key in refusal.detail


CONFIG_V6 = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/16", "EnableIPv6": True,
                                                    "IPv6Network": "fd10:244::/56"}))


@pytest.mark.parametrize("public_ip", [None, "192.168.100.7"], ids=["IPv6-only", "dual"])
@pytest.mark.parametrize("v6,words", [
    ("::", "unspecified"), ("::1", "loopback"), ("ff02::1", "multicast"), ("fe80::1", "link-local"),
    ("::ffff:192.168.100.7", "IPv4-mapped"), ("fd10:244:0:9::1", "inside the cluster network fd10:244::/56"),
    ("not an ip", "unusable value"),
])
def test_a_hostile_public_ipv6_is_refused(public_ip, v6, words):
    verdict = validation.validate(CONFIG_V6, [row("10.244.1.0-24", 3),
                                              row("10.244.3.0-24", 9, node="bad", public_ip=public_ip, PublicIPv6=v6)])
    assert list(verdict.valid) == ["10.244.1.0-24"], "the good lease must stay valid"
    refusal = verdict.refused["10.244.3.0-24"]
    assert words in refusal.detail
    assert refusal.reason == (validation.UNREADABLE if v6 == "not an ip" else validation.PUBLIC_IP)
    if refusal.reason == validation.PUBLIC_IP:
        assert f"PublicIPv6 {ipaddress.ip_address(v6)}" in refusal.detail


def test_a_lease_with_only_an_ipv6_underlay_is_valid_and_one_with_none_is_not():
    verdict = validation.validate(CONFIG_V6, [row("10.244.1.0-24", 3, public_ip=None, PublicIPv6="2001:db8::1"),
                                              row("10.244.2.0-24", 4, public_ip=None, mac="02:00:00:00:00:02")])
    lease = verdict.valid["10.244.1.0-24"]
    assert lease.public_ip is None and str(lease.public_ipv6) == "2001:db8::1"
    assert "PublicIP" not in json.loads(lease.to_json()) and lease.underlay_text == "2001:db8::1"
    assert "public IP 2001:db8::1" in lease.identity
    refusal = verdict.refused["10.244.2.0-24"]
    assert refusal.reason == validation.UNREADABLE and "neither PublicIP nor PublicIPv6" in refusal.detail


def test_overlap_oldest_wins_whatever_the_order_of_rows():
    """A /25 inside a live /24: the lease with the lower create revision wins, and every
    permutation of the rows (nodes see them in different orders) gives the same verdict."""
    rows = [row("10.244.1.0-24", 10, node="owner", mac="02:00:00:00:00:0a"),
            row("10.244.1.128-25", 20, node="intruder", mac="02:00:00:00:00:0b"),
            row("10.244.2.0-24", 15, node="other", mac="02:00:00:00:00:0c")]
    cfg = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/16", "SubnetLen": 24}))
    seen = set()
    for seed in range(6):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        verdict = validation.validate(cfg, shuffled)
        seen.add((tuple(sorted(verdict.valid)), tuple(sorted(verdict.refused))))
    assert seen == {(("10.244.1.0-24", "10.244.2.0-24"), ("10.244.1.128-25",))}
    refusal = validation.validate(cfg, rows).refused["10.244.1.128-25"]
    # refused for its length first: the /25 is not the network's SubnetLen either
    assert refusal.reason == validation.SUBNET_LENGTH


def test_overlap_between_well_formed_leases_is_refused_for_the_younger_one():
    """Two IPv4 leases that pass the per-lease checks share one SubnetLen, so they overlap
    only as the same key; their IPv6 subnets can still collide (hand-written or stale):
    the lease created later is refused and names the older one."""
    v6 = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/16", "EnableIPv6": True,
                                                 "IPv6Network": "fd00::/48"}))
    a = LeaseRow("10.244.1.0-24", value(node="a", mac="02:00:00:00:00:0a", IPv6Subnet="fd00:0:0:1::/64"), 0, 8)
    b = LeaseRow("10.244.2.0-24", value(node="b", mac="02:00:00:00:00:0b", IPv6Subnet="fd00:0:0:1::/64"), 0, 3)
    for rows in ([a, b], [b, a]):
        verdict = validation.validate(v6, rows)
        assert list(verdict.valid) == ["10.244.2.0-24"]
        refusal = verdict.refused["10.244.1.0-24"]
        assert refusal.reason == validation.OVERLAP and "older lease 10.244.2.0-24" in refusal.detail


def test_occupied_space_counts_every_key_valid_or_not():
    rows = [row("10.244.1.0-24", 1), LeaseRow("10.244.4.0-22", "not json", 0, 2)]
    space = validation.occupied(rows)
    assert not validation.is_free(space, ipaddress.IPv4Network("10.244.1.0/24"))
    assert not validation.is_free(space, ipaddress.IPv4Network("10.244.5.0/24"))
    assert validation.is_free(space, ipaddress.IPv4Network("10.244.8.0/24"))


def test_vxlan_validate_peer_data_is_the_backend_hook():
    good = VxlanData(vni=1, vtep_mac="02:42:ac:11:00:02")
    Vxlan.validate_peer_data(VxlanConfig(vni=1), good)
    for mac in ("ff:ff:ff:ff:ff:ff", "01:80:c2:00:00:00", "00:00:00:00:00:00"):
        with pytest.raises(BackendDataError):
            Vxlan.validate_peer_data(VxlanConfig(vni=1), VxlanData(vni=1, vtep_mac=mac))
    with pytest.raises(BackendDataError, match="VNI 2"):
        Vxlan.validate_peer_data(VxlanConfig(vni=1), VxlanData(vni=2, vtep_mac="02:42:ac:11:00:02"))


def test_contradicted_lists_leases_a_new_config_would_orphan():
    rows = [row("10.244.1.0-24", 1, node="a", mac="02:00:00:00:00:0a"),
            row("10.244.200.0-24", 2, node="b", mac="02:00:00:00:00:0b")]
    narrower = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/17"}))
    assert [r.key for r in validation.contradicted(CONFIG, narrower, rows)] == ["10.244.200.0-24"]
    longer = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/16", "SubnetLen": 25}))
    assert len(validation.contradicted(CONFIG, longer, rows)) == 2
    other_vni = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/16", "Backend": {"VNI": 9}}))
    assert {r.reason for r in validation.contradicted(CONFIG, other_vni, rows)} == {validation.BACKEND_DATA}
    wider = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/15", "MTU": 1400}))
    assert validation.contradicted(CONFIG, wider, rows) == []
    # a lease already refused under the old config is not the new config's doing
    hostile = rows + [row("10.244.3.0-24", 3, node="x", public_ip="127.0.0.1")]
    assert validation.contradicted(CONFIG, wider, hostile) == []


def test_config_change_splits_live_and_restart_changes():
    new = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/16", "MTU": 1400, "IPMasq": False,
                                                  "Backend": {"VNI": 1}}))
    live, restart = validation.config_change(CONFIG, new)
    assert live == ["MTU: unset -> 1400", "IPMasq: True -> False"] and restart == []
    moved = NetworkConfig.parse("weft", json.dumps({"Network": "10.245.0.0/16", "SubnetLen": 25,
                                                    "Backend": {"Type": "host-gw"}}))
    live, restart = validation.config_change(CONFIG, moved)
    assert [c.split(":")[0] for c in restart] == ["Network", "SubnetLen", "Backend.Type"]
    vni = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/16", "Backend": {"VNI": 4}}))
    assert validation.config_change(CONFIG, vni)[1] == ["Backend: vni=1, port=8472, direct_routing=False -> "
                                                       "vni=4, port=8472, direct_routing=False"]


def test_the_plugin_path_never_imports_netaddr():
    """netaddr belongs to the agent and weftctl; the per-pod plugin must not pay for it."""
    code = ("import sys; import cni_plugin.plugin.commands, cni_plugin.ipam.handlers, cni_plugin.cli.weft;"
            "print('netaddr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_prefix_index_sees_containment_both_ways_and_per_family():
    index = validation.PrefixIndex()
    index.add(ipaddress.ip_network("10.244.4.0/23"))
    index.add(ipaddress.ip_network("fd00:0:0:1::/64"))
    assert index.overlaps(ipaddress.ip_network("10.244.5.0/24"))      # inside
    assert index.overlaps(ipaddress.ip_network("10.244.0.0/16"))      # around
    assert index.overlaps(ipaddress.ip_network("10.244.4.0/23"))      # the same
    assert not index.overlaps(ipaddress.ip_network("10.244.6.0/24"))
    assert not index.overlaps(ipaddress.ip_network("10.244.0.0/22"))
    assert index.overlaps(ipaddress.ip_network("fd00::/48"))
    assert not index.overlaps(ipaddress.ip_network("fd00:0:0:2::/64"))
    # the IPv4 /16 with the same leading bits as an IPv6 prefix is another family
    assert not index.overlaps(ipaddress.ip_network("253.0.0.0/8"))


def test_free_blocks_count_and_index_the_free_subnets():
    cfg = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/22", "SubnetLen": 24}))
    space = validation.occupied([row("10.244.2.0-24", 1), LeaseRow("10.244.3.128-25", "x", 0, 2)])
    blocks = validation.free_blocks(space, *cfg.subnet_range())
    assert sum(count for _, count in blocks) == 1  # .0 is skipped, .2 leased, .3 half taken
    assert validation.nth_free(blocks, 0, 24) == ipaddress.ip_network("10.244.1.0/24")
    with pytest.raises(IndexError):
        validation.nth_free(blocks, 1, 24)


def test_cached_validation_gives_the_same_verdict():
    rows = [row("10.244.1.0-24", 1, node="a", mac="02:00:00:00:00:0a"),
            row("10.244.3.0-24", 2, node="b", public_ip="127.0.0.1")]
    cache = {}
    first = validation.validate(CONFIG, rows, cache)
    again = validation.validate(CONFIG, rows, cache)
    assert (list(first.valid), list(first.refused)) == (list(again.valid), list(again.refused)) == \
        (["10.244.1.0-24"], ["10.244.3.0-24"])
    assert len(cache) == 2


class _Series:
    def __init__(self):
        self.values = {}

    def labels(self, *labels):
        series = self

        class One:
            def set(self, value):
                series.values[labels] = value

            def inc(self, value=1):
                series.values[labels] = series.values.get(labels, 0) + value
        return One()


class _Log:
    def __init__(self):
        self.lines = []

    def error(self, msg, extra=None):
        self.lines.append(("error", msg))

    def info(self, msg, extra=None):
        self.lines.append(("info", msg))


def _stub_agent(own, config, public_ip="192.168.100.9", public_ipv6=None):
    from types import SimpleNamespace

    node = SimpleNamespace(public_ip=public_ip and ipaddress.ip_address(public_ip),
                           public_ipv6=public_ipv6 and ipaddress.ip_address(public_ipv6))
    return SimpleNamespace(held=SimpleNamespace(lease=own), config=config, log=_Log(), name="weft", conflict=None,
                           metrics=SimpleNamespace(refused=_Series(), refused_total=_Series()),
                           extra=lambda **kw: kw, node=node)


def test_a_node_with_no_common_underlay_family_is_refused_not_programmed():
    """This node has only an IPv4 underlay: a lease with only PublicIPv6 is no peer,
    refused with the reason no-common-underlay (logged once, counted); one with both is
    a peer."""
    from cni_plugin.agent.controllers.overlay import OverlayController
    from cni_plugin.subnet.lease import Lease
    from cni_plugin.subnet.live_verdict import LiveVerdict

    config = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/16"}))
    own_value = value(node="me", mac="02:00:00:00:00:0a")
    agent = _stub_agent(Lease.from_json("10.244.1.0-24", own_value), config)
    overlay = OverlayController(agent)
    v6_only = json.loads(value(node="six", mac="02:00:00:00:00:0b"))
    del v6_only["PublicIP"]
    v6_only["PublicIPv6"] = "2001:db8::2"
    both = dict(json.loads(value(node="both", mac="02:00:00:00:00:0c", public_ip="192.168.100.3")),
                PublicIPv6="2001:db8::3")
    overlay.live = LiveVerdict(config, [LeaseRow("10.244.1.0-24", own_value, 1, 50),
                                        LeaseRow("10.244.2.0-24", json.dumps(v6_only), 1, 10),
                                        LeaseRow("10.244.3.0-24", json.dumps(both), 1, 20)])
    for _ in range(2):
        peers = overlay._judge_all()
    assert list(peers) == ["10.244.3.0-24"]
    refusal = overlay.refused["10.244.2.0-24"]
    assert refusal.reason == validation.NO_COMMON_UNDERLAY == "no-common-underlay"
    assert "no common underlay family: this node has IPv4 underlay, node six has IPv6 (2001:db8::2)" \
        in refusal.detail
    assert [line for line in agent.log.lines if "no common underlay" in line[1]] == \
        [("error", f"lease refused: {refusal.detail}")]


def test_the_overlay_never_routes_a_lease_overlapping_its_own_subnet_however_old():
    """Validation alone lets an older lease win over ours (here: the same IPv6 subnet);
    the overlay controller must still keep it off this node, and log the refusal once."""
    from types import SimpleNamespace

    from cni_plugin.agent.controllers.overlay import OverlayController
    from cni_plugin.subnet.lease import Lease
    from cni_plugin.subnet.live_verdict import LiveVerdict

    v6 = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/16", "EnableIPv6": True,
                                                 "IPv6Network": "fd00::/48"}))
    own_value = value(node="me", mac="02:00:00:00:00:0a", IPv6Subnet="fd00:0:0:1::/64")
    own = Lease.from_json("10.244.1.0-24", own_value)
    agent = _stub_agent(own, v6)
    overlay = OverlayController(agent)
    overlay.live = LiveVerdict(v6, [
        LeaseRow("10.244.1.0-24", own_value, 1, 50),
        LeaseRow("10.244.2.0-24", value(node="old", mac="02:00:00:00:00:0b", IPv6Subnet="fd00:0:0:1::/64"), 1, 10),
        LeaseRow("10.244.3.0-24", value(node="fine", mac="02:00:00:00:00:0c", IPv6Subnet="fd00:0:0:3::/64"), 1, 20),
    ])
    for _ in range(2):
        peers = overlay._judge_all()
    assert list(peers) == ["10.244.3.0-24"]
    assert "own subnet" in overlay.refused["10.244.2.0-24"].detail
    assert [line for line in agent.log.lines if "of node old overlaps" in line[1]] == \
        [("error", overlay.refused["10.244.2.0-24"].detail.join(["lease refused: ", ""]))]
    assert agent.metrics.refused.values[("weft", "overlap")] == 2  # ours (by age) and theirs (by us)
    # our own lease lost by age: nobody routes to us, so the node is in conflict
    assert "this node's lease is refused" in agent.conflict and "older lease 10.244.2.0-24" in agent.conflict
    overlay.live.apply("delete", "10.244.2.0-24", "", 0)
    assert list(overlay._judge_all()) == ["10.244.3.0-24"] and agent.conflict is None
