"""cni_plugin/checks.py, the shared value checks, and every parser that relies on them
refusing a bool where a number belongs, each with its own message."""

import json

import pytest

from cni_plugin import checks
from cni_plugin.cni.dispatch import dispatch
from cni_plugin.plugin.commands import HANDLERS
from cni_plugin.policy.objects import PolicyError, parse_object
from cni_plugin.subnet.lease import ConfigError, NetworkConfig


@pytest.mark.parametrize("value,expected", [
    (0, True), (-3, True), (2 ** 70, True), (True, False), (False, False), (1.0, False), ("1", False),
    (None, False)])
def test_is_int_refuses_bools(value, expected):
    assert checks.is_int(value) is expected


@pytest.mark.parametrize("value,kind,expected", [
    (True, bool, True), (False, (bool, str), True), (True, int, False), (True, (int, float), False),
    (1, int, True), (1.5, (int, float), True), (1, (int, float), True), (1, bool, False),
    ("x", str, True), ("x", int, False), ({}, dict, True), ([], dict, False)])
def test_is_a_is_isinstance_where_a_bool_is_only_a_bool(value, kind, expected):
    assert checks.is_a(value, kind) is expected


def test_int_in_bounds_both_ends_and_open_top():
    assert checks.int_in(1, 1, 3) and checks.int_in(3, 1, 3)
    assert not checks.int_in(0, 1, 3) and not checks.int_in(4, 1, 3)
    assert checks.int_in(10 ** 9, 1) and not checks.int_in(0, 1)
    assert not checks.int_in(True, 0, 3) and not checks.int_in(2.0, 0, 3)


def test_ports_and_mtus():
    assert [checks.is_port(v) for v in (0, 1, 65535, 65536, True, "80")] == [False, True, True, False, False,
                                                                          False]
    assert [checks.is_mtu(v) for v in (67, 68, 1500, 65535, 65536, True)] == [False, True, True, True, False,
                                                                           False]


# -- the callers: a bool is refused, each with its own message ---------------------------
# Unchanged by the move to checks.py but for two: lockTimeout true now gets typed()'s
# "must be a number, got true" like every other typed key (it was "lockTimeout True must
# be a number of seconds in (0, 300]"), and a policy port true the "neither a port number
# nor a port name" of every other non-port (it was "True is not a port").

def _cni(conf_extra: dict):
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nonexistent"}
    conf = {"cniVersion": "1.0.0", "name": "net1", "type": "weft",
            "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": "10.1.0.0/24"}]]}, **conf_extra}
    out, code = dispatch(HANDLERS, env, json.dumps(conf).encode())
    return code, json.loads(out)


@pytest.mark.parametrize("key,value,message", [
    ("mtu", True, "mtu must be an integer, got true"),
    ("lockTimeout", True, "lockTimeout must be a number, got true"),
    ("lockTimeout", 0, "lockTimeout 0 must be a number of seconds in (0, 300]"),
    ("mtu", 67, "mtu 67 is out of range (68-65535)"),
    ("hairpinMode", 1, "hairpinMode must be a boolean, got 1"),
])
def test_the_plugin_config_refuses_bools_as_numbers(key, value, message):
    code, out = _cni({key: value})
    assert code == 1 and out["code"] == 7 and out["msg"] == message, out


@pytest.mark.parametrize("extra,message", [
    ({"MTU": True}, "network n: MTU has the wrong type: true"),
    ({"MTU": 65536}, "network n: MTU 65536 is out of range (68-65535)"),
    ({"SubnetLen": False}, "network n: SubnetLen has the wrong type: false"),
    ({"Backend": {"Type": "vxlan", "VNI": True}}, "network n: Backend.VNI True must be an integer from 1 to 16777215"),
    ({"Backend": {"Type": "vxlan", "Port": False}}, "network n: Backend.Port False must be an integer from 1 to 65535"),
    ({"Backend": {"Type": "wireguard", "ListenPort": True}},
     "network n: Backend.ListenPort True must be an integer from 1 to 65535"),
])
def test_network_configs_refuse_bools_as_numbers(extra, message):
    with pytest.raises(ConfigError) as caught:
        NetworkConfig.from_dict("n", {"Network": "10.244.0.0/16", **extra})
    assert str(caught.value) == message


def test_a_lease_ttl_must_be_a_whole_positive_number():
    from cni_plugin.subnet.etcd_registry import EtcdRegistry

    registry = EtcdRegistry.__new__(EtcdRegistry)  # the check comes before any etcd call
    for ttl in (True, 0, 1.5):
        with pytest.raises(ValueError, match=f"lease ttl {ttl!r} must be a positive number of seconds"):
            registry.create_lease("n", "k", "v", ttl)


@pytest.mark.parametrize("port,message", [
    (True, "spec.ingress[0].ports[0].port True is neither a port number nor a port name"),
    (0, "spec.ingress[0].ports[0].port 0 is out of range (1-65535)"),
    ("70000", "spec.ingress[0].ports[0].port 70000 is out of range (1-65535)"),
])
def test_policy_ports_refuse_bools(port, message):
    with pytest.raises(PolicyError) as caught:
        parse_object({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                      "metadata": {"name": "p", "namespace": "x"},
                      "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": port}]}]}})
    assert str(caught.value) == "NetworkPolicy x/p: " + message
