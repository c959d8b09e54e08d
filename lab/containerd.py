"""A private containerd (CRI plugin) inside a node network namespace: Debian 12's 1.6
or the 2.1 that scripts/fetch-runtimes.sh unpacks into build/runtimes.

    runtime = Containerd(node_ns_name, workdir, cni_bin_dir, {"": weft_conf_dir, "ref": ref_dir},
                         release("2.1"))
    runtime.start()                      # holder, containerd, pause image imported
    client = runtime.client()            # lab.cri.RuntimeClient on its socket
    ...
    runtime.cleanup()                    # sandboxes, containerd, shims, pauses, cgroups, mounts

How it is kept private, and what this machine needs (see TESTING.md):
- A "holder" process enters the node's network namespace and a new mount namespace
  (propagation private: nothing mounted there reaches the host) and stays there until
  cleanup.  containerd, its shims, the pause processes and the CNI plugins run inside
  it (`nsenter -t <holder> --mount --net`), so the pod netns paths containerd hands to
  CNI open the same files for containerd and the `weft` it runs.  The node's weftd
  runs outside it (lab/cri_node.py: a mount namespace of its own) and gets each pod's
  namespace from that `weft`, by descriptor.
- In that mount namespace: a fresh sysfs for the node's netns (as `ip netns exec`
  does) with the cgroup hierarchies mounted again from the host's mountinfo (a fresh
  sysfs hides the hybrid v1+v2 mounts and runc then finds no cgroup); a tmpfs on /run
  (pod netns files under /run/netns, containerd's hard-coded shim socket dir
  /run/containerd/s, runc state) and on /var/lib (libcni's result cache,
  /var/lib/cni): nothing outlives the holder, two nodes never share a shim socket.
- CRI config: restrict_oom_score_adj (no CAP_SYS_RESOURCE here; runc otherwise fails
  "can't get final child's PID from pipe"), SystemdCgroup = false, overlayfs, a
  locally built pause image as the sandbox image, one runtime handler per CNI conf dir
  (the per-runtime `cni_conf_dir`).  containerd 1.6 reads config version 2 (all of
  CRI under io.containerd.grpc.v1.cri), 2.x version 3 (CNI and runtimes under
  io.containerd.cri.v1.runtime, the sandbox image under io.containerd.cri.v1.images).
- Each release runs its own shim: containerd finds `containerd-shim-runc-v2` on its
  PATH, so the release's bin dir comes first there (and each handler names it in
  runtime_path on 2.x); both run Debian 12's runc 1.1.5.
- Every sandbox gets cgroup_parent /weft-cri-<suffix>; cleanup kills what is left in
  that cgroup and removes it.  Shims are found by the `-address <our socket>` on
  their command line and stopped by PID.
"""

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

from . import runtimes
from .cri import RuntimeClient
from .namespaces import file_tail, stop_process, suffix

RUNC = "/usr/sbin/runc"
SHIM = "containerd-shim-runc-v2"
BUSYBOX = "/bin/busybox"
REFERENCE_PLUGINS = "/usr/lib/cni"
PAUSE_IMAGE = "weft.local/pause:1"
INSTALL_HINT = "run `make deps` (Debian's containerd, runc and busybox-static; containerd 2 and " \
               "CNI plugins 1.9 unpacked into build/runtimes by scripts/fetch-runtimes.sh)"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

# Runs as: nsenter --net=<node netns> unshare --mount --propagation private python3 -c HOLDER
# (argv: the cgroup mounts to make again, as JSON).  "mount -n": not recorded in utab.
_HOLDER = r"""
import json, os, subprocess, sys
def mount(*args):
    subprocess.run(["mount", "-n", *args], check=True, timeout=30, capture_output=True)
mount("--make-rprivate", "/")
subprocess.run(["umount", "-n", "-l", "/sys"], check=True, timeout=30)
mount("-t", "sysfs", "sysfs", "/sys")
hierarchies = json.loads(sys.argv[1])
if "/sys/fs/cgroup" not in [point for point, _, _ in hierarchies]:  # hybrid or v1: a tmpfs holds them
    mount("-t", "tmpfs", "-o", "mode=755", "cgroup", "/sys/fs/cgroup")
for point, fstype, options in hierarchies:  # the unified v2 root (if any) comes first
    os.makedirs(point, exist_ok=True)
    mount("-t", fstype, "-o", options, fstype, point)
for private in ("/run", "/var/lib"):
    mount("-t", "tmpfs", "-o", "mode=755", "weft-cri", private)
for made in ("/run/netns", "/run/containerd", "/var/lib/cni"):
    os.makedirs(made)
print("ready", flush=True)
sys.stdin.read()  # lives until the harness closes stdin (or goes away)
"""


class ContainerdError(RuntimeError):
    pass


class Release:
    """One containerd release as the lab runs it: where its binaries are, the reference
    CNI plugins beside it, the conflist cniVersion its libcni reads, its config version."""

    def __init__(self, name: str, bin_dir: str, plugins_dir: str, cni_version: str, config_version: int):
        self.name, self.bin_dir, self.plugins_dir = name, bin_dir, plugins_dir
        self.cni_version, self.config_version = cni_version, config_version

    def tool(self, name: str) -> str:
        return os.path.join(self.bin_dir, name)

    def __repr__(self):
        return f"containerd {self.name}"


RELEASES = ("1.6", "2.1")


def release(name: str = "1.6") -> Release:
    """1.6: Debian 12's containerd (libcni 1.1.2: conflists up to 1.0.0) with its
    plugins 1.1.1; 2.1: containerd 2.1.9 (a libcni of CNI 1.1: 1.1.0, STATUS) with plugins 1.9.1,
    both from build/runtimes (RuntimeNotFetched names the command when missing)."""
    if name == "1.6":
        return Release(name, "/usr/bin", "/usr/lib/cni", "1.0.0", 2)
    if name == "2.1":
        return Release(name, runtimes.containerd2_bin(), runtimes.cni_plugins_19(), "1.1.0", 3)
    raise ValueError(f"no containerd release {name!r} in the lab (known: {', '.join(RELEASES)})")


def require_tools(which: Release):
    """Fail (not skip) with the install hint when a runtime piece is missing."""
    missing = [path for path in (which.tool("containerd"), which.tool("ctr"), which.tool(SHIM), RUNC,
                                 BUSYBOX, f"{which.plugins_dir}/portmap", f"{which.plugins_dir}/loopback")
               if not os.access(path, os.X_OK)]
    if missing:
        raise ContainerdError(f"missing {', '.join(missing)}: {INSTALL_HINT}")


def tool_versions(which: Release = None) -> dict:
    """containerd and runc versions as they print them (for the README and the bench)."""
    which = which or release()
    containerd = subprocess.run([which.tool("containerd"), "--version"], capture_output=True,
                                text=True).stdout.split()
    runc = subprocess.run([RUNC, "--version"], capture_output=True, text=True).stdout.split()
    return {"containerd": containerd[2] if len(containerd) > 2 else "?",
            "runc": runc[2] if len(runc) > 2 else "?"}


def cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> list:
    """[(mount point, fstype, super options)] of the cgroup hierarchies at or under
    /sys/fs/cgroup, in mount order (hybrid v1+v2 here; a unified v2 host has one)."""
    found = []
    with open(mountinfo) as handle:
        for line in handle:
            head, _, tail = line.partition(" - ")
            point = head.split()[4]
            fstype, _source, options = tail.split()[:3]
            if fstype in ("cgroup", "cgroup2") and (point + "/").startswith("/sys/fs/cgroup/"):
                kept = ",".join(opt for opt in options.split(",") if opt not in ("rw", "ro"))
                found.append((point, fstype, kept or "rw"))
    return found


# -- the pause image -----------------------------------------------------------


def _tar_bytes(entries) -> bytes:
    """A tar (ustar) from [(TarInfo, bytes or None)], deterministic metadata."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in entries:
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _entry(name, kind=tarfile.REGTYPE, data=None, mode=0o755, target=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, target
    info.size = len(data) if data is not None else 0
    return info, data


def pause_image_tar(path: str, name: str = PAUSE_IMAGE) -> str:
    """A docker-archive image tarball (manifest.json, config, one layer) whose only
    process is busybox-static sleeping forever (CRI kills the sandbox with SIGKILL).
    Built from the host's /bin/busybox; nothing is downloaded."""
    with open(BUSYBOX, "rb") as handle:
        busybox = handle.read()
    layer = _tar_bytes([_entry("bin", tarfile.DIRTYPE), _entry("bin/busybox", data=busybox),
                        _entry("bin/sh", tarfile.SYMTYPE, target="busybox", mode=0o777),
                        _entry("bin/sleep", tarfile.SYMTYPE, target="busybox", mode=0o777),
                        *[_entry(d, tarfile.DIRTYPE) for d in ("dev", "etc", "proc", "sys", "tmp")]])
    layer_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/bin/sleep"], "Cmd": ["2147483647"], "WorkingDir": "/",
                   "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        "history": [{"created_by": "weft lab: busybox-static as pause"}],
    }, sort_keys=True).encode()
    config_id = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_id}.json", "RepoTags": [name],
                            "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    image = _tar_bytes([_entry(f"{config_id}.json", data=config, mode=0o644),
                        _entry(layer_id, tarfile.DIRTYPE),
                        _entry(f"{layer_id}/layer.tar", data=layer, mode=0o644),
                        _entry("manifest.json", data=manifest, mode=0o644)])
    with open(path, "wb") as handle:
        handle.write(image)
    return path


def cni_bin_dir(path: str, weft_cni_dir: str, plugins_dir: str = REFERENCE_PLUGINS) -> str:
    """One directory with weft's launchers and the reference plugins (containerd 1.6's
    bin_dir is a single directory; CRI also needs `loopback` there)."""
    os.makedirs(path, exist_ok=True)
    for source_dir in (weft_cni_dir, plugins_dir):
        for name in os.listdir(source_dir):
            link = os.path.join(path, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(source_dir, name), link)
    return path


# -- containerd's config --------------------------------------------------------

_DISABLED = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
             "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
             "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
# 2.x only: snapshotters this host has no use for, and NRI (it would listen under /var/run/nri)
_DISABLED_V3 = ["io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs",
                "io.containerd.differ.v1.erofs", "io.containerd.nri.v1.nri"]


def _common(runtime, version: int, disabled: list) -> str:
    """The top of either config version: own root, state, sockets; no debug or metrics
    listener; containerd's opt dir inside the workdir."""
    q = json.dumps
    return f"""version = {version}
root = {q(os.path.join(runtime.dir, "root"))}
state = {q(os.path.join(runtime.dir, "state"))}
disabled_plugins = {q(disabled)}
[grpc]
  address = {q(runtime.socket)}
[ttrpc]
  address = {q(runtime.socket + ".ttrpc")}
[debug]
  address = ""
  level = "info"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = {q(os.path.join(runtime.dir, "opt"))}
"""


def _runtimes(runtime, prefix: str, shim: str = None) -> str:
    """One runc runtime per handler ("" is `runc`, the default), each non-default one
    with its own CNI conf dir; shim: the shim binary to name (2.x)."""
    q = json.dumps
    out = []
    for handler, conf_dir in runtime.conf_dirs.items():
        table = f'{prefix}.containerd.runtimes.{handler or "runc"}'
        out.append(f'[{table}]\n  runtime_type = "io.containerd.runc.v2"\n'
                   + (f"  runtime_path = {q(shim)}\n" if shim else "")
                   + (f"  cni_conf_dir = {q(conf_dir)}\n  cni_max_conf_num = 1\n" if handler else "")
                   + f"[{table}.options]\n  SystemdCgroup = false\n  BinaryName = {q(RUNC)}\n")
    return "".join(out)


def config_v2(runtime) -> str:
    """containerd 1.6: every CRI setting under io.containerd.grpc.v1.cri."""
    q = json.dumps
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return _common(runtime, 2, _DISABLED) + f"""[{cri}]
  sandbox_image = {q(PAUSE_IMAGE)}
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.cni]
  bin_dir = {q(runtime.bin_dir)}
  conf_dir = {q(runtime.default_conf_dir())}
  max_conf_num = 1
""" + _runtimes(runtime, cri)


def config_v3(runtime) -> str:
    """containerd 2.x: the CRI runtime plugin (CNI, runtimes, OCI settings), the CRI
    images plugin (snapshotter, the pinned sandbox image) and the CRI gRPC plugin
    (streaming) are separate plugins with their own tables."""
    q = json.dumps
    run = 'plugins."io.containerd.cri.v1.runtime"'
    images = 'plugins."io.containerd.cri.v1.images"'
    return _common(runtime, 3, _DISABLED + _DISABLED_V3) + f"""[{images}]
  snapshotter = "overlayfs"
[{images}.pinned_images]
  sandbox = {q(PAUSE_IMAGE)}
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[{run}]
  restrict_oom_score_adj = true
  disable_apparmor = true
[{run}.containerd]
  default_runtime_name = "runc"
[{run}.cni]
  bin_dirs = [{q(runtime.bin_dir)}]
  conf_dir = {q(runtime.default_conf_dir())}
  max_conf_num = 1
""" + _runtimes(runtime, run, shim=runtime.release.tool(SHIM))


# -- containerd ------------------------------------------------------------------


class Containerd:
    """containerd with the CRI plugin for one node namespace.

    conf_dirs: {runtime handler: CNI conf dir}; "" is the default handler ("runc").
    which: the Release to run (default: Debian 12's 1.6).
    """

    def __init__(self, node_netns: str, workdir: str, bin_dir: str, conf_dirs: dict, which: Release = None):
        self.release = which or release()
        require_tools(self.release)
        self.node_netns = node_netns
        self.dir = os.path.abspath(str(workdir))
        self.bin_dir = bin_dir
        self.conf_dirs = dict(conf_dirs)
        self.suffix = suffix()
        self.cgroup_parent = f"/weft-cri-{self.suffix}"
        self.socket = os.path.join(self.dir, "containerd.sock")
        if len(self.socket + ".ttrpc") >= 108:  # sun_path
            raise ContainerdError(f"workdir {self.dir} is too long for containerd's unix sockets")
        self.config_path = os.path.join(self.dir, "config.toml")
        self.log_path = os.path.join(self.dir, "containerd.log")
        self.holder = None
        self.process = None
        self._client = None
        os.makedirs(self.dir, exist_ok=True)
        for conf_dir in self.conf_dirs.values():
            os.makedirs(conf_dir, exist_ok=True)

    def default_conf_dir(self) -> str:
        return self.conf_dirs.get("", os.path.join(self.dir, "net.d"))

    # -- lifecycle -------------------------------------------------------------
    def open(self):
        """The config and the mount namespace holder, before containerd itself (so
        e.g. the node's agent can be started in that namespace first)."""
        if self.holder is None:
            try:
                self._write_config()
                self._start_holder()
            except BaseException:
                self.cleanup()
                raise
        return self

    def start(self):
        self.open()
        try:
            self.start_daemon()
            self.import_image(pause_image_tar(os.path.join(self.dir, "pause.tar")))
        except BaseException:
            self.cleanup()
            raise
        return self

    def _write_config(self):
        text = (config_v2 if self.release.config_version == 2 else config_v3)(self)
        with open(self.config_path, "w") as handle:
            handle.write(text)

    def _start_holder(self):
        argv = ["nsenter", f"--net=/run/netns/{self.node_netns}", "unshare", "--mount",
                "--propagation", "private", sys.executable, "-c", _HOLDER, json.dumps(cgroup_mounts())]
        self.holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
        line = self.holder.stdout.readline().strip()  # the holder prints or exits
        if line != "ready":
            raise ContainerdError(f"mount namespace holder failed: {self._stop_holder()}")

    def enter(self) -> list:
        """argv prefix running a command where containerd runs (node netns, private mounts)."""
        if self.holder is None or self.holder.poll() is not None:
            raise ContainerdError("the mount namespace holder is not running")
        return ["nsenter", "-t", str(self.holder.pid), "--mount", "--net"]

    def start_daemon(self):
        """containerd itself (again after stop_daemon: a restart)."""
        log = open(self.log_path, "ab")
        env = dict(os.environ, PATH=f"{self.release.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        self.process = subprocess.Popen([*self.enter(), self.release.tool("containerd"), "--config",
                                         self.config_path], stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        last = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ContainerdError(f"containerd exited {self.process.returncode}: {self.log_tail()}")
            try:
                self.client().version()
                return
            except Exception as exc:  # grpc.RpcError until the CRI service is up
                last = exc
                time.sleep(0.1)
        raise ContainerdError(f"containerd's CRI never answered Version within {START_TIMEOUT}s "
                              f"({last}); log: {self.log_tail()}")

    def stop_daemon(self, sig=signal.SIGTERM):
        """Stop containerd only; shims and sandboxes keep running."""
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self.process = self.process, None
        stop_process(process, STOP_TIMEOUT, sig)

    def import_image(self, tar_path: str):
        proc = subprocess.run([*self.enter(), self.release.tool("ctr"), "--address", self.socket,
                               "-n", "k8s.io", "images", "import", "--snapshotter", "overlayfs", tar_path],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise ContainerdError(f"ctr images import {tar_path}: {proc.stderr.strip()}")

    def client(self) -> RuntimeClient:
        if self._client is None:
            self._client = RuntimeClient(self.socket)
        return self._client

    def log_tail(self, lines: int = 30) -> str:
        return file_tail(self.log_path, lines)

    # -- sandboxes -------------------------------------------------------------
    def sandbox_config(self, name: str, uid: str = None, namespace: str = "default", **kwargs):
        """A PodSandboxConfig with this runtime's cgroup parent."""
        return self.client().sandbox_config(name, uid or f"uid-{name}", namespace,
                                            cgroup_parent=self.cgroup_parent, **kwargs)

    def netns_path(self, sandbox_id: str) -> str:
        """The sandbox's netns file as containerd (and CNI) see it."""
        info = self.client().call("PodSandboxStatus", pod_sandbox_id=sandbox_id, verbose=True).info
        spec = json.loads(info["info"])["runtimeSpec"]
        for namespace in spec["linux"]["namespaces"]:
            if namespace["type"] == "network":
                return namespace["path"]
        raise ContainerdError(f"sandbox {sandbox_id} has no network namespace path")

    def pod_enter(self, netns_path: str) -> list:
        """argv prefix running a command in a pod netns (whose file lives in the holder's
        mount namespace)."""
        # /var/run is an absolute symlink to /run: resolved under /proc/PID/root it would
        # leave the holder's root, so name the file by its real place
        if netns_path.startswith("/var/run/"):
            netns_path = netns_path[len("/var"):]
        return ["nsenter", f"--net=/proc/{self.holder.pid}/root{netns_path}"]

    def in_pod(self, netns_path: str, argv, check=True, timeout=60):
        """Run argv inside a pod netns."""
        proc = subprocess.run([*self.pod_enter(netns_path), *argv],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ContainerdError(f"{' '.join(argv)} in {netns_path}: {proc.stderr.strip()}")
        return proc

    def in_node(self, argv, check=True, timeout=60, cwd=None, input_text=None, env=None):
        """Run argv where containerd runs (nsenter into a mount namespace starts in its
        root directory; cwd is kept with --wd)."""
        wd = [f"--wd={cwd}"] if cwd else []
        proc = subprocess.run([*self.enter(), *wd, *argv], capture_output=True, text=True, timeout=timeout,
                              input=input_text, env=env)
        if check and proc.returncode != 0:
            raise ContainerdError(f"{' '.join(argv)} in node {self.node_netns}: {proc.stderr.strip()}")
        return proc

    def pod_netns_files(self) -> list:
        """Names under /run/netns in containerd's mount namespace (pod netns files)."""
        if self.holder is None or self.holder.poll() is not None:
            return []
        return sorted(os.listdir(f"/proc/{self.holder.pid}/root/run/netns"))

    def shim_pids(self) -> list:
        """PIDs of containerd-shim processes serving this containerd (by its socket)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    argv = handle.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if argv and os.path.basename(argv[0]).startswith("containerd-shim") \
                    and "-address" in argv and argv[argv.index("-address") + 1:][:1] == [self.socket]:
                pids.append(int(entry))
        return pids

    def _cgroup_dirs(self) -> list:
        rel = self.cgroup_parent.lstrip("/")
        return [os.path.join(point, rel) for point, _fstype, _opts in cgroup_mounts()
                if os.path.isdir(os.path.join(point, rel))]

    def _kill_cgroup_members(self):
        for top in self._cgroup_dirs():
            for dirpath, _dirs, files in os.walk(top):
                if "cgroup.procs" not in files:
                    continue
                with open(os.path.join(dirpath, "cgroup.procs")) as handle:
                    for pid in handle.read().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass

    def _remove_cgroups(self):
        for _ in range(100):  # bounded: killed processes take a moment to leave
            left = self._cgroup_dirs()
            if not left:
                return
            for top in left:
                for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        pass
            time.sleep(0.05)

    def cleanup(self):
        """Idempotent; removes everything this runtime made, also after a failure."""
        if self.process is not None and self.process.poll() is None:
            try:
                client = self.client()
                for sandbox in client.list_pod_sandbox():
                    try:
                        client.stop_pod_sandbox(sandbox.id)
                        client.remove_pod_sandbox(sandbox.id)
                    except Exception:  # a broken CNI conf: kill below, cgroups removed
                        pass
            except Exception:
                pass
        self.stop_daemon()
        for pid in self.shim_pids():
            try:
                os.kill(pid, signal.SIGKILL)  # ours: found by our own socket path
            except ProcessLookupError:
                pass
        self._kill_cgroup_members()
        self._remove_cgroups()
        self._stop_holder()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_holder(self) -> str:
        holder, self.holder = self.holder, None
        if holder is None:
            return ""
        if holder.poll() is None:
            holder.stdin.close()
            try:
                holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait(timeout=10)
        err = holder.stderr.read()
        holder.stdout.close()
        holder.stderr.close()
        return err
