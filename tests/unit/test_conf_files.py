"""Every network configuration shipped in conf/ loads through weft's own loader."""

import glob
import ipaddress
import json
import os

import pytest

from cni_plugin.plugin import config as plugin_config
from cni_plugin.cni import netconf
from cni_plugin.subnet import subnet_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFLISTS = sorted(glob.glob(os.path.join(REPO, "conf", "*.conflist")))


def test_there_are_conflists():
    assert CONFLISTS


@pytest.mark.parametrize("path", CONFLISTS, ids=os.path.basename)
def test_conflist_loads(path, tmp_path):
    with open(path) as handle:
        conflist = json.load(handle)
    lease = tmp_path / "lease.env"
    subnet_file.write(str(lease), subnet_file.SubnetLease(
        network=ipaddress.IPv4Network("10.244.0.0/16"), subnet=ipaddress.IPv4Interface("10.244.3.1/24"),
        mtu=1450, ipmasq=True))
    weft_entries = [p for p in conflist["plugins"] if p["type"] == "weft"]
    assert weft_entries
    for entry in weft_entries:
        conf = {**entry, "cniVersion": conflist["cniVersion"], "name": conflist["name"],
                "subnetFile": str(lease)}
        netconf.check_version(conf)
        netconf.check_name(conf)
        cfg = plugin_config.load(conf, "ADD")
        assert cfg.mtu == 1450 and cfg.ip_masq
        assert cfg.delegate_conf["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]]
