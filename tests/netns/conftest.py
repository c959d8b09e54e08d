"""Fixtures for tests that run weft against real namespaces (root only).

Every test gets its own node namespace (the plugin's 'host') and pod namespaces;
the plugin executables run inside the node namespace via `ip netns exec`, so
bridges, veths and nftables tables never touch the machine's root namespace.
"""

import json
import os

import pytest

from lab.cni import invoke
from lab.namespaces import Namespace


@pytest.fixture
def node():
    ns = Namespace("wnode")
    yield ns
    ns.delete()


@pytest.fixture
def pods():
    made = []

    def make():
        ns = Namespace("wpod")
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.delete()


class Weft:
    """Calls the installed `weft` inside one node namespace."""

    def __init__(self, installed, cni_path, node, tmp_path):
        self.exe = f"{installed}/cni/weft"
        self.ipam_exe = f"{installed}/cni/weft-ipam"
        self.cni_path = cni_path
        self.node = node
        self.tmp = tmp_path

    def conf(self, version="1.0.0", **overrides):
        conf = {
            "cniVersion": version,
            "name": "weftnet",
            "type": "weft",
            "bridge": "cbr0",
            "logFile": f"{self.tmp}/weft.log",
            "dataDir": f"{self.tmp}/weft-data",
            "ipam": {"type": "weft-ipam", "dataDir": f"{self.tmp}/ipam",
                     "ranges": [[{"subnet": "10.244.1.0/24"}]]},
        }
        conf.update(overrides)
        return conf

    def __call__(self, command, conf, pod=None, cid="c1", ifname="eth0", args="", exe=None, extra_env=None,
                 cni_path=None):
        return invoke(exe or self.exe, command, conf, container_id=cid if command not in ("GC", "STATUS") else "",
                      netns=pod.path if pod is not None else "", ifname=ifname if command not in ("GC", "STATUS") else "",
                      cni_path=cni_path or self.cni_path, node=self.node, args=args, extra_env=extra_env)

    def stub(self, name: str, script: str) -> str:
        """An executable shell script `name` in a directory of its own (a stand-in for a tool
        or plugin that fails on cue); returns the directory."""
        directory = self.tmp / f"stub-{name}"
        directory.mkdir(exist_ok=True)
        path = directory / name
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(0o755)
        return str(directory)

    def log_lines(self) -> list:
        path = self.tmp / "weft.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def ipam_files(self, network="weftnet"):
        """Allocated IP files in weft-ipam's store for `network`."""
        directory = f"{self.tmp}/ipam/{network}"
        if not os.path.isdir(directory):
            return []
        import ipaddress

        out = []
        for name in os.listdir(directory):
            try:
                ipaddress.ip_address(name)
                out.append(name)
            except ValueError:
                pass
        return sorted(out)


@pytest.fixture
def weft(installed, cni_path, node, tmp_path):
    return Weft(installed, cni_path, node, tmp_path)
