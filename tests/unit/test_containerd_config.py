"""docs/runtimes.md shows the CRI part of the containerd configs the suite runs; each
block must say what lab/containerd.py writes for that config version (the lab's own
paths aside: root, sockets, conf and bin dirs are per test node)."""

import os
import re
import tomllib
from types import SimpleNamespace

import pytest

from lab import containerd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNTIMES_DOC = os.path.join(REPO, "docs", "runtimes.md")


def doc_config(version: int) -> dict:
    with open(RUNTIMES_DOC) as handle:
        text = handle.read()
    (block,) = re.findall(rf"<!-- containerd config: version {version} -->\n```toml\n(.*?)```", text, re.S)
    return tomllib.loads(block)


def lab_config(version: int) -> dict:
    """What the lab writes for a node with the default handler and one more."""
    which = containerd.Release("x", "/lab/bin", "/lab/cni", "1.1.0", version)
    runtime = SimpleNamespace(dir="/lab/work", socket="/lab/work/containerd.sock", bin_dir="/lab/cni-bin",
                              conf_dirs={"": "/lab/net.d-weft", "ref": "/lab/net.d-ref"}, release=which,
                              default_conf_dir=lambda: "/lab/net.d-weft")
    writer = containerd.config_v2 if version == 2 else containerd.config_v3
    return tomllib.loads(writer(runtime))


def flat(table: dict, prefix=()) -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flat(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def is_path(value) -> bool:
    values = value if isinstance(value, list) else [value]
    return bool(values) and all(isinstance(v, str) and v.startswith("/") for v in values)


@pytest.mark.parametrize("version", [2, 3])
def test_the_documented_config_is_what_the_lab_runs(version):
    documented, written = flat(doc_config(version)), flat(lab_config(version))
    missing = [".".join(key) for key in documented if key not in written]
    assert not missing, f"docs/runtimes.md's version {version} block has keys the lab does not write: {missing}"
    differ = {".".join(key): (value, written[key]) for key, value in documented.items()
              if not is_path(value) and value != written[key]}
    assert not differ, f"docs/runtimes.md's version {version} block and the lab disagree: {differ}"


def test_the_lab_writes_each_handler_with_its_own_conf_dir_and_release_shim():
    v2, v3 = lab_config(2), lab_config(3)
    cri_v2 = v2["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
    cri_v3 = v3["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]
    for runtimes in (cri_v2, cri_v3):
        assert runtimes["ref"]["cni_conf_dir"] == "/lab/net.d-ref" and "cni_conf_dir" not in runtimes["runc"]
    assert {r["runtime_path"] for r in cri_v3.values()} == {"/lab/bin/containerd-shim-runc-v2"}
    assert all("runtime_path" not in r for r in cri_v2.values())  # 1.6: its shim from PATH
