"""datapath/wireguard.py in a real namespace: what an operator meets when WireGuard is
missing or the device name is taken (the working device is in tests/cluster/)."""

import ipaddress

import pytest

from cni_plugin.backends.wireguard import new_private_key
from cni_plugin.datapath.errors import LinkConflict
from cni_plugin.datapath.netlink import open_agent
from cni_plugin.datapath.wireguard import KernelWireGuard, WireGuardError, ensure_wireguard
from lab.namespaces import Namespace

DEV = "weft-wg.51820"
ADDRESS = [ipaddress.ip_interface("10.246.3.0/32")]


@pytest.fixture
def ns():
    made = Namespace("wwg")
    yield made
    made.delete()


def test_no_kernel_module_and_no_wireguard_go_names_the_package_and_leaves_nothing(ns, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # wireguard-go cannot be found
    with open_agent(ns.path) as nl:
        try:
            device = ensure_wireguard(nl, DEV, new_private_key(), 51820, 1440, ADDRESS, str(tmp_path / "wg"))
        except WireGuardError as exc:
            assert "apt-get install --no-install-recommends wireguard-go" in str(exc)
            assert "no WireGuard module" in str(exc)
            assert nl.link(DEV) is None, "a half-built device was left behind"
        else:  # this kernel has the module: then wireguard-go is not needed at all
            assert isinstance(device.driver, KernelWireGuard) and nl.link(DEV).kind == "wireguard"


def test_a_foreign_link_of_the_device_name_is_refused_and_kept(ns, tmp_path):
    ns.run(["ip", "link", "add", DEV, "type", "bridge"])
    with open_agent(ns.path) as nl:
        with pytest.raises(LinkConflict, match=f"link {DEV} exists and is a bridge .* remove it"):
            ensure_wireguard(nl, DEV, new_private_key(), 51820, 1440, ADDRESS, str(tmp_path / "wg"))
        assert nl.link(DEV).kind == "bridge"
