"""Local images for the containerized-node test, built without any registry.

weft-test-base:<hash>  Debian 12 root filesystem made by mmdebstrap from the Debian
                       mirror apt already uses, `docker import`ed (python3.11, iproute2,
                       nftables, ping); the tag hashes the package list
weft-test:<hash>       conf/image/Containerfile on that base (what the DaemonSet runs),
                       built offline from a context holding this checkout and wheels
                       of weft's dependencies; the tag hashes the context
weft-test-node:<hash>  a node: the base with Python removed, so weft can only run from
                       what weft-install put on it

Each image is built only when its tag is missing (`docker image inspect`).
Usable by hand: python -m tests.deploy.images
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = "bookworm"
BASE_PACKAGES = ["python3.11", "python3.11-venv", "patchelf", "iproute2", "nftables",
                 "iputils-ping", "procps", "wireguard-go"]
# rootfs trimmed of what no test reads
DPKG_EXCLUDES = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*"]
CONTEXT_PATHS = ["cni_plugin", "bin", "scripts", "conf", "setup.cfg", "pyproject.toml", "README.md"]
NODE_CONTAINERFILE = """\
FROM {base}
# a node has no Python: weft must run from the runtime weft-install copies to /opt/weft
RUN rm -rf /usr/bin/python3* /usr/lib/python3* /usr/share/python-wheels && mkdir -p /opt/cni/bin /run/netns
"""
BUILD_TIMEOUT = 900


def log(msg):
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def run(args, **kwargs):
    kwargs.setdefault("timeout", BUILD_TIMEOUT)
    proc = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args[:4]))} ... failed ({proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def have_image(tag) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def debian_sources() -> list:
    """sources.list lines for SUITE (main, updates, security) from apt's own configuration."""
    out = run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(CODENAME) $(COMPONENT)",
               "Created-By: Packages"]).stdout
    lines = set()
    for row in out.splitlines():
        parts = row.split()
        if len(parts) == 3 and parts[1] in (SUITE, f"{SUITE}-updates", f"{SUITE}-security") \
                and parts[2] == "main":
            lines.add(f"deb {parts[0]} {parts[1]} main")
    if not lines:
        raise RuntimeError(f"apt has no {SUITE} main source configured (apt-get indextargets)")
    return sorted(lines)


def base_image() -> str:
    digest = hashlib.sha256(repr((SUITE, BASE_PACKAGES, DPKG_EXCLUDES)).encode()).hexdigest()[:12]
    tag = f"weft-test-base:{digest}"
    if have_image(tag):
        return tag
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="weft-rootfs-") as tmp:
        tar = os.path.join(tmp, "rootfs.tar")
        run(["mmdebstrap", "--variant=minbase", "--include=" + ",".join(BASE_PACKAGES),
             *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES],
             '--aptopt=Acquire::Retries "3"', SUITE, tar, *debian_sources()],
            stdin=subprocess.DEVNULL)
        run(["docker", "import", tar, tag])
    log(f"built {tag} in {time.monotonic() - started:.0f}s")
    return tag


def _constraints() -> str:
    """The dev venv's versions, so the image runs what the tests ran."""
    freeze = run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"]).stdout
    return "\n".join(line for line in freeze.splitlines() if "==" in line) + "\n"


def _context(directory):
    for path in CONTEXT_PATHS:
        source = os.path.join(REPO, path)
        target = os.path.join(directory, path)
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)


def _tree_digest(directory, extra: bytes) -> str:
    digest = hashlib.sha256(extra)
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, directory).encode() + b"\0")
            digest.update(str(os.stat(path).st_mode & 0o111).encode())
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()[:12]


def weft_image(base: str) -> str:
    with tempfile.TemporaryDirectory(prefix="weft-context-") as ctx:
        _context(ctx)
        constraints = _constraints()
        tag = f"weft-test:{_tree_digest(ctx, (base + constraints).encode())}"
        if have_image(tag):
            return tag
        started = time.monotonic()
        wheels = os.path.join(ctx, ".wheels")
        with open(os.path.join(ctx, "constraints.txt"), "w") as handle:
            handle.write(constraints)
        pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
        run([*pip, "wheel", "-w", wheels, "-c", os.path.join(ctx, "constraints.txt"), REPO])
        run([*pip, "download", "-d", wheels, "--only-binary=:all:", "setuptools>=61", "wheel"])
        for name in os.listdir(wheels):  # the image builds weft itself, from the context
            if name.startswith("weft-"):
                os.unlink(os.path.join(wheels, name))
        containerfile = os.path.join(ctx, "conf", "image", "Containerfile")
        # the build stage gets a tag of its own, so dropping an old build drops its stage too
        for target, name in (("build", tag.replace("weft-test:", "weft-test-build:")), (None, tag)):
            run(["docker", "build", "--network", "none", "--build-arg", f"BASE={base}",
                 *(["--target", target] if target else []), "-f", containerfile, "-t", name, ctx])
    log(f"built {tag} in {time.monotonic() - started:.0f}s")
    _drop_older(tag)
    return tag


def _drop_older(tag):
    """Earlier weft-test and weft-test-build tags (their untagged layers go with them)."""
    digest = tag.split(":")[1]
    for repo in ("weft-test", "weft-test-build"):
        tags = run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", repo]).stdout.split()
        for old in tags:
            if not old.endswith(":" + digest):
                subprocess.run(["docker", "image", "rm", old], capture_output=True)


def node_image(base: str) -> str:
    text = NODE_CONTAINERFILE.format(base=base)
    tag = f"weft-test-node:{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if have_image(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="weft-node-") as ctx:
        with open(os.path.join(ctx, "Containerfile"), "w") as handle:
            handle.write(text)
        run(["docker", "build", "--network", "none", "-f", os.path.join(ctx, "Containerfile"), "-t", tag, ctx])
    return tag


def build_all() -> dict:
    base = base_image()
    return {"base": base, "weft": weft_image(base), "node": node_image(base)}


if __name__ == "__main__":
    print(build_all())
