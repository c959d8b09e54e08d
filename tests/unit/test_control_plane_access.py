"""The network config's ControlPlaneAccess key (subnet/lease.py), how a running agent
takes a change of it (subnet/validation.py), and the control-guard controller's pure
helpers: etcd URLs to guarded addresses, entries to pods."""

import ipaddress
import json

import pytest

from cni_plugin.agent.controllers.control_guard import etcd_targets, matches, resolve
from cni_plugin.datapath import control_guard
from cni_plugin.subnet import validation
from cni_plugin.subnet.lease import ConfigError, NetworkConfig

BASE = {"Network": "10.244.0.0/16"}


def parse(value):
    return NetworkConfig.parse("weft", json.dumps({**BASE, "ControlPlaneAccess": value}))


def test_absent_means_no_pod_is_let_through():
    assert NetworkConfig.parse("weft", json.dumps(BASE)).control_plane_access == ()


def test_entries_are_kept_sorted_and_once():
    config = parse(["ops/etcd-backup", "kube-system/*", "ops/etcd-backup", "ops/x.y-z"])
    assert config.control_plane_access == ("kube-system/*", "ops/etcd-backup", "ops/x.y-z")
    assert parse([]).control_plane_access == ()


@pytest.mark.parametrize("value, words", [
    (True, ["ControlPlaneAccess is true, not a list", '["namespace/name", "namespace/*", ...]']),
    ("ops/etcd", ['ControlPlaneAccess is "ops/etcd", not a list']),
    ({"ops": "etcd"}, ['ControlPlaneAccess is {"ops": "etcd"}, not a list']),
    (None, ["ControlPlaneAccess is null, not a list"]),
    ([1], ["ControlPlaneAccess[0] is 1, not a string", '"namespace/name"']),
    (["ops/a", None], ["ControlPlaneAccess[1] is null, not a string"]),
    (["etcd"], ["ControlPlaneAccess[0] 'etcd' is not \"namespace/name\" or \"namespace/*\""]),
    (["ops/a/b"], ["ControlPlaneAccess[0] 'ops/a/b' is not"]),
    (["Ops/etcd"], ["ControlPlaneAccess[0] 'Ops/etcd': namespace 'Ops' is not a Kubernetes namespace name"]),
    (["*/etcd"], ["namespace '*' is not a Kubernetes namespace name"]),
    (["/etcd"], ["namespace '' is not a Kubernetes namespace name"]),
    (["o" * 64 + "/etcd"], ["is not a Kubernetes namespace name", "at most 63"]),
    (["ops/"], ["'' is not a Kubernetes pod name", 'nor "*"']),
    (["ops/Etcd"], ["'Etcd' is not a Kubernetes pod name"]),
    (["ops/etcd_backup"], ["'etcd_backup' is not a Kubernetes pod name"]),
    (["ops/-etcd"], ["'-etcd' is not a Kubernetes pod name"]),
    (["ops/etcd*"], ["'etcd*' is not a Kubernetes pod name"]),
    (["ops/" + "e" * 254], ["is not a Kubernetes pod name", "at most 253"]),
])
def test_bad_values_are_refused_naming_the_key_and_entry(value, words):
    with pytest.raises(ConfigError) as caught:
        parse(value)
    message = str(caught.value)
    assert message.startswith("network weft: ControlPlaneAccess"), message
    for word in words:
        assert word in message, message


def test_longest_names_kubernetes_allows_are_accepted():
    entry = "n" * 63 + "/" + ".".join(["p" * 63] * 3) + "." + "p" * 61  # 253 characters
    assert parse([entry]).control_plane_access == (entry,)


def test_a_change_is_applied_live_and_said_plainly():
    old, new = parse([]), parse(["ops/etcd-backup", "kube-system/*"])
    live, restart = validation.config_change(old, new)
    assert restart == []
    assert live == ["ControlPlaneAccess: [] -> [kube-system/*, ops/etcd-backup]"]
    assert validation.config_change(new, new) == ([], [])


def test_entries_name_pods_or_namespaces():
    entries = ("ops/etcd-backup", "kube-system/*")
    assert matches(entries, "ops", "etcd-backup")
    assert matches(entries, "kube-system", "anything")
    assert not matches(entries, "ops", "etcd-backup-2")
    assert not matches(entries, "default", "etcd-backup")
    assert not matches(entries, None, None)  # a pod added without K8S_POD_* args


def test_etcd_urls_become_host_and_port():
    targets, problems = etcd_targets(["http://192.168.100.254:2379", "https://etcd.example:4001",
                                      "http://[fd00::1]:2379", "10.0.0.1:2379", "http://10.0.0.2",
                                      "unix:///run/etcd.sock", "http://10.0.0.3:notaport"])
    assert targets == [("192.168.100.254", 2379), ("etcd.example", 4001), ("fd00::1", 2379),
                       ("10.0.0.1", 2379), ("10.0.0.2", 2379)]
    assert problems == ["etcd endpoint 'unix:///run/etcd.sock' is not an http(s) URL: not guarded",
                        "etcd endpoint 'http://10.0.0.3:notaport' has no usable port"]


def test_addresses_stay_and_names_resolve_to_every_family():
    assert resolve("192.168.100.254", 2379) == [(ipaddress.ip_address("192.168.100.254"), 2379)]
    assert resolve("fd00::1", 2379) == [(ipaddress.ip_address("fd00::1"), 2379)]
    found = resolve("localhost", 2379)  # /etc/hosts: 127.0.0.1 and, on Debian, ::1
    assert (ipaddress.ip_address("127.0.0.1"), 2379) in found
    assert all(port == 2379 for _, port in found)


def test_the_table_spells_elements_as_nft_lists_them():
    spec = control_guard.guard(
        "we-ft", pods=["10.244.1.0/24", "fd00:1::/64"], cluster=["10.244.0.0/16"], allowed=["10.244.1.9"],
        etcd=[("192.168.100.253", 2379), ("192.168.100.254", 2379), ("fd00::9", 2379), ("192.168.100.253", 2379)],
        ports=[("udp", 8472), ("tcp", 9465)], peers=["192.168.100.2"])
    assert spec.table == "weft_control_we_ft"
    wanted = control_guard.wanted_elements(spec)
    assert wanted["pods4"] == ["10.244.1.0/24"] and wanted["pods6"] == ["fd00:1::/64"]
    assert wanted["etcd4"] == ["192.168.100.253 . 2379", "192.168.100.254 . 2379"]
    assert wanted["etcd6"] == ["fd00::9 . 2379"]
    assert wanted["ports"] == ["tcp . 9465", "udp . 8472"]
    assert wanted["allowed4"] == ["10.244.1.9"] and wanted["allowed6"] == []
    assert wanted["peers4"] == ["192.168.100.2"]
    # equal inputs in any order make equal specs (a pass compares them to skip work)
    assert spec == control_guard.guard(
        "we-ft", pods=["fd00:1::/64", "10.244.1.0/24"], cluster=["10.244.0.0/16"], allowed=["10.244.1.9"],
        etcd=[("fd00::9", 2379), ("192.168.100.254", 2379), ("192.168.100.253", 2379)],
        ports=[("tcp", 9465), ("udp", 8472)], peers=["192.168.100.2"])
