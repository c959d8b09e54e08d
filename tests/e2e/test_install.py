"""`make install` puts working launchers where runtimes look, and is safe to repeat."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def install(target):
    return subprocess.run(["make", "-s", "-C", REPO, "install", f"VENV={sys.prefix}",
                           f"CNI_BIN_DIR={target}/cni", f"BIN_DIR={target}/bin"],
                          capture_output=True, text=True, timeout=300)


def test_install_twice_gives_working_isolated_launchers(tmp_path):
    for _ in range(2):
        proc = install(tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "cni")) == ["weft", "weft-ipam"]
    assert sorted(os.listdir(tmp_path / "bin")) == ["weftctl", "weftd"]
    # the caller's PYTHONPATH cannot change what runs (-I)
    env = {"CNI_COMMAND": "VERSION", "PYTHONPATH": str(tmp_path / "nowhere"), "PATH": os.environ["PATH"]}
    for plugin in ("weft", "weft-ipam"):
        exe = tmp_path / "cni" / plugin
        assert os.access(exe, os.X_OK)
        assert exe.read_text().splitlines()[0] == f"#!{sys.prefix}/bin/python -IS"
        out = subprocess.run([str(exe)], input=b'{"cniVersion": "0.4.0"}', env=env,
                             capture_output=True, timeout=30)
        assert out.returncode == 0 and json.loads(out.stdout)["cniVersion"] == "0.4.0"
    for tool in ("weftd", "weftctl"):
        assert (tmp_path / "bin" / tool).read_text().splitlines()[0] == f"#!{sys.prefix}/bin/python -I"
    usage = subprocess.run([str(tmp_path / "bin" / "weftctl"), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "whois" in usage.stdout
