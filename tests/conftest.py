"""Shared by every test directory: lab/ and demo/ importable, weft installed for real."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

REFERENCE_PLUGINS = "/usr/lib/cni"


DEFAULT_RUN_DIR = "/run/weft"  # beside the default subnet file: standalone networks' port records


@pytest.fixture(scope="session", autouse=True)
def no_port_record_dirs_left():
    """A standalone network without a subnetFile keeps its port records in
    /run/weft/<network>.ports, on the host (guard/ports.py).  The tests name their networks
    at random, so each would leave an empty directory there: the ones this session made
    are removed at its end, by name, and only when empty."""
    def listing():
        try:
            return {n for n in os.listdir(DEFAULT_RUN_DIR) if n.endswith(".ports")}
        except OSError:
            return set()

    before = listing()
    yield
    for name in sorted(listing() - before):
        try:
            os.rmdir(os.path.join(DEFAULT_RUN_DIR, name))
        except OSError:  # not empty (a record a test meant to keep) or gone already
            pass


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


@pytest.fixture(scope="session")
def cnitool():
    """weft's libcni driver (tools/cnitool), built by `make cnitool`."""
    from lab.cnitool import build

    try:
        return build()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def netns():
    """make(prefix) -> a new network namespace named prefix-<random>; all are removed
    when the test ends, passed or failed."""
    from lab.namespaces import Namespace

    made = []

    def make(prefix):
        made.append(Namespace(prefix))
        return made[-1]

    yield make
    for ns in reversed(made):
        ns.delete()
