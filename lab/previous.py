"""The previous version of weft, runnable beside the checkout under test: its `weft`
forwarder and its weftd, for rolling-upgrade tests (an old forwarder talking to a new
weftd, and the reverse).  The code is the commit's own (git archive), run by the test
venv's interpreter with the old tree first on sys.path."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the last commit before the forwarder handed weftd the pod's network namespace
BEFORE_NETNS_HANDOFF = "e57191c"
# the last commit before IPv6-only networks (EnableIPv4 false, leases keyed by IPv6 subnets)
BEFORE_IPV6_ONLY = "d841445"


def _have(commit: str) -> None:
    """Make sure `commit` is in the clone: a shallow clone fetches its history once; a
    clone without it fails here, naming the commit (never a skip)."""
    def present():
        return subprocess.run(["git", "-C", REPO, "cat-file", "-e", f"{commit}^{{commit}}"],
                              capture_output=True, timeout=60).returncode == 0
    if present():
        return
    shallow = subprocess.run(["git", "-C", REPO, "rev-parse", "--is-shallow-repository"], capture_output=True,
                             text=True, timeout=60).stdout.strip() == "true"
    if shallow:
        subprocess.run(["git", "-C", REPO, "fetch", "-q", "--unshallow"], capture_output=True, timeout=300)
    if not present():
        raise RuntimeError(f"the previous version (commit {commit}) is not in {REPO}: the rolling-upgrade "
                           "tests need the repository's history (a full clone, or `git fetch --unshallow`)")


def source(path: str, commit: str = BEFORE_NETNS_HANDOFF) -> str:
    """One file of the repository as `commit` had it."""
    _have(commit)
    return subprocess.run(["git", "-C", REPO, "show", f"{commit}:{path}"], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def install(dest: str, commit: str = BEFORE_NETNS_HANDOFF) -> str:
    """dest/cni/{weft,weft-ipam} and dest/bin/weftd of `commit`; returns dest."""
    _have(commit)
    src = os.path.join(dest, "src")
    os.makedirs(src, exist_ok=True)
    archive = subprocess.run(["git", "-C", REPO, "archive", commit, "cni_plugin"], capture_output=True,
                             check=True, timeout=60).stdout
    subprocess.run(["tar", "-x", "-C", src], input=archive, check=True, timeout=60)
    # as scripts/install.sh binds them: CNI plugins without site processing, weftd isolated
    for name, directory, flags, entry in (("weft", "cni", "-IS", "from cni_plugin.forwarder import main\n"
                                           "sys.exit(main('weft'))"),
                                          ("weft-ipam", "cni", "-IS", "from cni_plugin.forwarder import main\n"
                                           "sys.exit(main('weft-ipam'))"),
                                          ("weftd", "bin", "-I", "from cni_plugin.cli.weftd import main\n"
                                           "sys.exit(main())")):
        os.makedirs(os.path.join(dest, directory), exist_ok=True)
        path = os.path.join(dest, directory, name)
        with open(path, "w") as handle:
            handle.write(f"#!{sys.executable} {flags}\nimport sys\nsys.path.insert(0, {src!r})\n{entry}\n")
        os.chmod(path, 0o755)
    return dest
