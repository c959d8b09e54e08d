"""Shared by every test directory: lab/ and demo/ importable, weft installed for real."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

REFERENCE_PLUGINS = "/usr/lib/cni"


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """`make install` into a temp CNI dir, bound to the dev venv: the real launchers."""
    if os.geteuid() != 0:
        pytest.fail("tests that install weft need root (real network namespaces); run `make test` as root")
    root = tmp_path_factory.mktemp("install")
    subprocess.run(["make", "-s", "-C", REPO, "install", f"VENV={sys.prefix}",
                    f"CNI_BIN_DIR={root}/cni", f"BIN_DIR={root}/bin"], check=True,
                   capture_output=True, timeout=300)
    return root


@pytest.fixture(scope="session")
def cni_path(installed):
    return f"{installed}/cni:{REFERENCE_PLUGINS}"
