"""Where the runtimes newer than Debian 12's live: build/runtimes/, unpacked by
scripts/fetch-runtimes.sh (run by `make deps`).  Each accessor returns a path that exists
or raises RuntimeNotFetched naming the path and the command that provides it."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNTIMES = os.path.join(REPO, "build", "runtimes")
CONTAINERD2_BIN = os.path.join(RUNTIMES, "containerd2", "usr", "bin")
CNI_PLUGINS_19 = os.path.join(RUNTIMES, "cni-plugins", "usr", "lib", "cni")
MULTUS = os.path.join(RUNTIMES, "multus", "multus")
FETCH = "scripts/fetch-runtimes.sh"


class RuntimeNotFetched(RuntimeError):
    pass


def _require(path: str, what: str) -> str:
    if not os.path.exists(path):
        hint = (" (Multus comes only from $WEFT_SHARED_DIR/bin/multus, default ../shared/bin/multus)"
                if path == MULTUS else "")
        raise RuntimeNotFetched(f"{what}: {path} is missing; run `make deps` or {FETCH}{hint}")
    return path


def containerd2_bin() -> str:
    """The directory holding containerd 2.x's containerd, containerd-shim-runc-v2 and ctr."""
    _require(os.path.join(CONTAINERD2_BIN, "containerd"), "containerd 2")
    return CONTAINERD2_BIN


def cni_plugins_19() -> str:
    """The directory of the reference CNI plugins 1.9 (bridge, host-local, portmap, ...)."""
    _require(os.path.join(CNI_PLUGINS_19, "bridge"), "CNI plugins 1.9")
    return CNI_PLUGINS_19


def multus() -> str:
    return _require(MULTUS, "Multus")


def versions() -> dict:
    """{component: (version, source)} from build/runtimes/VERSIONS."""
    found = {}
    try:
        with open(os.path.join(RUNTIMES, "VERSIONS")) as lines:
            for line in lines:
                name, _, rest = line.strip().partition(" ")
                version, _, source = rest.partition(" ")
                found[name] = (version, source)
    except FileNotFoundError:
        pass
    return found
