"""Lease model and lease policy (pure logic; an in-memory registry stands in for etcd)."""

import ipaddress
import itertools
import json

import pytest

from cni_plugin.backends.vxlan import VxlanData
from cni_plugin.subnet.lease import ConfigError, Lease, NetworkConfig, parse_subnet_key, subnet_key
from cni_plugin.subnet.lease_manager import LeaseConflict, LeaseManager, NoFreeSubnet
from cni_plugin.subnet.registry import RegistryError


class MemoryRegistry:
    """The slice of subnet.registry.Registry the lease policy uses, in memory."""

    def __init__(self):
        self.keys = {}  # key -> (value, lease id)
        self.created = {}  # key -> create revision
        self.modified = {}  # key -> mod revision
        self.revision = 1
        self.alive = set()
        self.ids = itertools.count(100)

    def list_leases(self, network):
        return [(k, v, lid, self.created.get(k, 1)) for k, (v, lid) in sorted(self.keys.items())], self.revision

    def _put(self, key, value, lease_id):
        self.revision += 1
        self.created.setdefault(key, self.revision)
        self.modified[key] = self.revision
        self.keys[key] = (value, lease_id)

    def create_lease(self, network, key, value, ttl, listed_at=0):
        if key in self.keys:
            return None
        if listed_at and any(rev > listed_at for k, rev in self.modified.items() if k in self.keys):
            return None  # as etcd's range Compare: a lease key changed since the listing
        lease_id = next(self.ids)
        self.alive.add(lease_id)
        self._put(key, value, lease_id)
        return lease_id

    def update_lease(self, network, key, value, lease_id):
        if self.keys.get(key, (None, None))[1] != lease_id:
            return False
        self._put(key, value, lease_id)
        return True

    def refresh(self, lease_id):
        return 60 if lease_id in self.alive else 0

    def expire(self, lease_id):
        self.alive.discard(lease_id)
        for key, (_, lid) in list(self.keys.items()):
            if lid == lease_id:
                del self.keys[key]
                self.created.pop(key, None)


CONFIG = NetworkConfig.parse("weft", json.dumps({"Network": "10.244.0.0/22", "SubnetLen": 24}))


def template(node="n1", mac="02:00:00:00:00:01"):
    return Lease(subnet=ipaddress.IPv4Network("0.0.0.0/32"), public_ip=ipaddress.IPv4Address("192.0.2.1"),
                 node_name=node, backend_data=VxlanData(1, mac))


def manager(registry, tmp_path, node="n1"):
    return LeaseManager(registry, CONFIG, template(node), str(tmp_path / node))


def foreign(subnet, node, ipv6_subnet=None):
    return Lease(subnet=ipaddress.IPv4Network(subnet), public_ip=ipaddress.IPv4Address("192.0.2.9"),
                 node_name=node, ipv6_subnet=ipaddress.IPv6Network(ipv6_subnet) if ipv6_subnet else None).to_json()


def foreign_v6(subnet, node):
    return Lease(subnet=None, public_ip=ipaddress.IPv4Address("192.0.2.9"), node_name=node,
                 ipv6_subnet=ipaddress.IPv6Network(subnet)).to_json()


def test_config_defaults_and_range():
    assert CONFIG.subnet_range() == (ipaddress.IPv4Network("10.244.1.0/24"), ipaddress.IPv4Network("10.244.3.0/24"))
    assert CONFIG.subnet_count() == 3 and CONFIG.backend_type == "vxlan" and CONFIG.backend.vni == 1


@pytest.mark.parametrize("raw,needle", [
    ({"Network": "10.0.0.0/33"}, "10.0.0.0/33"),
    ({"Network": "10.0.0.0/16", "SubnetLen": 16}, "SubnetLen 16"),
    ({"Network": "10.0.0.0/16", "Backend": {"Type": "udp"}}, "udp"),
    ({"Network": "10.0.0.0/16", "Backend": {"VNI": 0}}, "VNI"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}, "outside Network"),
    ({"Network": "10.0.0.0/16", "EnableIPv6": True}, "IPv6Network"),
    ({}, "Network is required"),
])
def test_config_errors_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as caught:
        NetworkConfig.from_dict("weft", raw)
    assert needle in str(caught.value)


def test_lease_round_trip_and_key():
    lease = Lease(subnet=ipaddress.IPv4Network("10.244.3.0/24"), public_ip=ipaddress.IPv4Address("192.0.2.3"),
                  node_name="n3", backend_data=VxlanData(1, "02:00:00:00:00:03"),
                  ipv6_subnet=ipaddress.IPv6Network("fd00::/64"))
    assert lease.key == "10.244.3.0-24" == subnet_key(lease.subnet)
    assert parse_subnet_key("/weft/networks/x/subnets/10.244.3.0-24") == lease.subnet
    assert Lease.from_json(lease.key, lease.to_json()) == lease
    assert json.loads(lease.to_json())["BackendData"] == {"VNI": 1, "VtepMAC": "02:00:00:00:00:03"}
    with pytest.raises(ConfigError):
        Lease.from_json("10.244.3.0-24", '{"NodeName": "x"}')


def test_acquire_takes_a_free_subnet_and_skips_reservations(tmp_path):
    registry = MemoryRegistry()
    registry.keys["10.244.1.0-24"] = (foreign("10.244.1.0/24", "reserved-for-other"), 0)
    registry.keys["10.244.2.0-24"] = (foreign("10.244.2.0/24", "n9"), 7)
    held = manager(registry, tmp_path).acquire(60)
    assert held.lease.subnet == ipaddress.IPv4Network("10.244.3.0/24")
    with pytest.raises(NoFreeSubnet) as caught:
        manager(registry, tmp_path, "n2").acquire(60)
    assert "10.244.1.0/24" in str(caught.value) and "10.244.3.0/24" in str(caught.value)


def test_acquire_reuses_own_lease_and_a_reservation_naming_us(tmp_path):
    registry = MemoryRegistry()
    first = manager(registry, tmp_path).acquire(60)
    again = manager(registry, tmp_path).acquire(60)
    assert again.lease_id == first.lease_id and again.lease.subnet == first.lease.subnet
    registry.keys["10.244.2.0-24"] = (foreign("10.244.2.0/24", "n2"), 0)
    reserved = manager(registry, tmp_path, "n2").acquire(60)
    assert reserved.lease_id == 0 and str(reserved.lease.subnet) == "10.244.2.0/24"


def test_restart_asks_for_the_recorded_subnet_and_never_takes_another_if_it_is_gone(tmp_path):
    registry = MemoryRegistry()
    held = manager(registry, tmp_path).acquire(60)
    registry.expire(held.lease_id)
    again = manager(registry, tmp_path).acquire(60)
    assert again.lease.subnet == held.lease.subnet and again.lease_id != held.lease_id
    registry.expire(again.lease_id)
    registry.keys[held.lease.key] = (foreign(str(held.lease.subnet), "intruder"), 55)
    with pytest.raises(LeaseConflict) as caught:
        manager(registry, tmp_path).acquire(60)
    assert "n1" in str(caught.value) and "intruder" in str(caught.value)
    assert [v for v, _ in registry.keys.values() if '"n1"' in v] == []


def test_renew_recreates_a_vanished_lease_or_reports_a_conflict(tmp_path):
    registry = MemoryRegistry()
    policy = manager(registry, tmp_path)
    held = policy.acquire(60)
    assert policy.renew(held, 60) is held
    registry.expire(held.lease_id)
    renewed = policy.renew(held, 60)
    assert renewed.lease.subnet == held.lease.subnet and renewed.lease_id != held.lease_id
    del registry.keys[renewed.lease.key]  # key deleted, etcd lease alive: only verify sees it
    assert policy.renew(renewed, 60) is renewed
    recreated = policy.renew(renewed, 60, verify=True)
    assert recreated.lease_id != renewed.lease_id and recreated.lease.key in registry.keys
    registry.expire(recreated.lease_id)
    registry.keys[recreated.lease.key] = (foreign(str(recreated.lease.subnet), "n7"), 77)
    with pytest.raises(LeaseConflict) as caught:
        policy.renew(recreated, 60)
    assert "held by n7" in str(caught.value)


def test_adopt_publishes_a_changed_vtep_mac(tmp_path):
    registry = MemoryRegistry()
    held = manager(registry, tmp_path).acquire(60)
    changed = LeaseManager(registry, CONFIG, template(mac="02:00:00:00:00:99"), str(tmp_path / "n1"))
    again = changed.acquire(60)
    assert again.lease_id == held.lease_id
    assert json.loads(registry.keys[held.lease.key][0])["BackendData"]["VtepMAC"] == "02:00:00:00:00:99"


# -- node identity ---------------------------------------------------------------------

ME, OTHER = "a" * 32, "b" * 32


def identified(tmp_path, node_id, node="n1"):
    from dataclasses import replace

    return LeaseManager(MemoryRegistry(), CONFIG, replace(template(node), node_id=node_id), str(tmp_path / node))


def test_a_lease_under_our_name_with_another_node_id_is_a_collision(tmp_path):
    from cni_plugin.subnet.lease_manager import NodeCollision

    first = identified(tmp_path / "one", ME)
    held = first.acquire(60)
    assert json.loads(first.registry.keys[held.lease.key][0])["NodeID"] == ME
    clone = LeaseManager(first.registry, CONFIG, Lease(
        subnet=ipaddress.IPv4Network("0.0.0.0/32"), public_ip=ipaddress.IPv4Address("192.0.2.77"),
        node_name="n1", backend_data=VxlanData(1, "02:00:00:00:00:77"), node_id=OTHER), str(tmp_path / "two"))
    before = dict(first.registry.keys)
    with pytest.raises(NodeCollision) as caught:
        clone.acquire(60)
    message = str(caught.value)
    assert ME in message and OTHER in message and "192.0.2.1" in message and "192.0.2.77" in message
    assert first.registry.keys == before, "the clone wrote to etcd"
    # the same identity (a restart with the same state dir) adopts it
    again = LeaseManager(first.registry, CONFIG, first.template, str(tmp_path / "one"))
    assert again.acquire(60).lease_id == held.lease_id


def test_a_lease_without_node_id_is_adopted_and_stamped(tmp_path):
    policy = identified(tmp_path, ME)
    registry = policy.registry
    registry.create_lease("weft", "10.244.2.0-24", Lease(
        subnet=ipaddress.IPv4Network("10.244.2.0/24"), public_ip=ipaddress.IPv4Address("192.0.2.1"),
        node_name="n1", backend_data=VxlanData(1, "02:00:00:00:00:01")).to_json(), 60)
    held = policy.acquire(60)
    assert held.lease.key == "10.244.2.0-24"
    assert json.loads(registry.keys["10.244.2.0-24"][0])["NodeID"] == ME


def test_renew_never_adopts_a_namesake_that_rewrote_our_key(tmp_path):
    from dataclasses import replace

    from cni_plugin.subnet.lease_manager import NodeCollision

    policy = identified(tmp_path, ME)
    held = policy.acquire(60)
    registry = policy.registry
    registry.keys[held.lease.key] = (replace(held.lease, node_id=OTHER).to_json(), held.lease_id)
    with pytest.raises(NodeCollision):
        policy.renew(held, 60, verify=True)


def test_acquire_avoids_space_of_odd_keys(tmp_path):
    policy = identified(tmp_path, ME)
    registry = policy.registry
    registry.keys["10.244.0.0-22"] = ("hand-written, covers the whole network", 0)
    with pytest.raises(NoFreeSubnet, match="overlapped by other lease keys"):
        policy.acquire(60)
    del registry.keys["10.244.0.0-22"]
    registry.keys["10.244.2.0-23"] = ("covers .2 and .3", 0)
    assert policy.acquire(60).lease.key == "10.244.1.0-24"


def test_republish_writes_new_backend_data_and_verify_retries_an_unpublished_one(tmp_path):
    registry = MemoryRegistry()
    policy = manager(registry, tmp_path)
    held = policy.acquire(60)
    held = policy.republish(held, VxlanData(1, "02:00:00:00:00:42"))  # e.g. a rotated key
    assert json.loads(registry.keys[held.lease.key][0])["BackendData"]["VtepMAC"] == "02:00:00:00:00:42"
    # the write was lost (etcd away): the next verifying renew publishes the new data
    registry.keys[held.lease.key] = (held.lease.to_json().replace("02:00:00:00:00:42", "02:00:00:00:00:01"),
                                     held.lease_id)
    assert policy.renew(held, 60) is held  # a plain renew does not read the value
    again = policy.renew(held, 60, verify=True)
    assert again.lease_id == held.lease_id
    assert json.loads(registry.keys[held.lease.key][0])["BackendData"]["VtepMAC"] == "02:00:00:00:00:42"


def test_a_republish_whose_write_failed_is_written_by_the_next_plain_renew(tmp_path):
    registry = MemoryRegistry()
    policy = manager(registry, tmp_path)
    held = policy.acquire(60)
    assert not policy.unpublished(held)
    working = registry.update_lease

    def unreachable(*args):
        raise RegistryError("etcd did not answer")

    registry.update_lease = unreachable
    with pytest.raises(RegistryError):
        policy.republish(held, VxlanData(1, "02:00:00:00:00:42"))  # e.g. a rotated key
    assert policy.unpublished(held)  # etcd still holds the old data: say so
    registry.update_lease = working
    again = policy.renew(held, 60)  # no verify asked: the pending data is written anyway
    assert not policy.unpublished(again)
    assert json.loads(registry.keys[held.lease.key][0])["BackendData"]["VtepMAC"] == "02:00:00:00:00:42"
    assert policy.renew(again, 60) is again  # published: a plain renew reads nothing again


def test_allocation_on_an_ipv6_only_network_takes_ipv6_subnets(tmp_path):
    small = NetworkConfig.from_dict("six", {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd10:224::/48",
                                            "IPv6SubnetMin": "fd10:224:0:1::", "IPv6SubnetMax": "fd10:224:0:3::"})
    registry = MemoryRegistry()
    registry.keys["fd10:224:0:1::-64"] = (foreign_v6("fd10:224:0:1::/64", "other"), 0)
    # a dual-stack lease left over from before the network became IPv6-only keeps its IPv6 space
    registry.keys["10.244.9.0-24"] = (foreign("10.244.9.0/24", "stale", "fd10:224:0:2::/64"), 0)
    held = LeaseManager(registry, small, template(), str(tmp_path / "n1")).acquire(60)
    assert held.lease.key == "fd10:224:0:3::-64" and held.lease.subnet is None
    assert json.loads(registry.keys["fd10:224:0:3::-64"][0])["IPv6Subnet"] == "fd10:224:0:3::/64"
    assert json.loads((tmp_path / "n1" / "six" / "lease.json").read_text())["subnet"] == "fd10:224:0:3::/64"
    # a restart asks for the recorded IPv6 subnet again
    again = LeaseManager(registry, small, template(), str(tmp_path / "n1")).acquire(60)
    assert again.lease.key == held.lease.key and again.lease_id == held.lease_id
    with pytest.raises(NoFreeSubnet) as caught:
        LeaseManager(registry, small, template("n2"), str(tmp_path / "n2")).acquire(60)
    assert "no free /64 subnet between fd10:224:0:1::/64 and fd10:224:0:3::/64" in str(caught.value)
    # a vanished lease is recreated on the same IPv6 subnet
    registry.expire(held.lease_id)
    renewed = LeaseManager(registry, small, template(), str(tmp_path / "n1")).renew(held, 60)
    assert renewed.lease.key == held.lease.key and renewed.lease_id != held.lease_id
