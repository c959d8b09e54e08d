"""Real-runtime harness: podman (CNI backend, libcni) driving CNI plugins.

No pytest in here; tests/e2e/test_podman_*.py wrap it in fixtures.

Model: a "node" is a network namespace the test created (``make_netns``).
``PodmanEnv`` runs every podman command with podman's *own* network namespace
being that node, so the CNI bridge, the host-side veths and the routes the
plugins create all land in the node namespace, never in the root one.
Everything else podman owns (image store, container DB, locks, events, CNI
result cache, cgroups) is private to the env and removed by ``cleanup()``.

Quirks of this host / podman 4.3.1 (Debian 12) and how they are handled
-----------------------------------------------------------------------
1. ``ip netns exec <node> podman run ...`` fails:
       Your kernel does not support pids limit capabilities or the cgroup is
       not mounted. PIDs limit discarded.
       level=warning msg="Failed to add conmon to cgroupfs sandbox cgroup:
           creating cgroup for cpuset: mkdir /sys/fs/cgroup/cpuset: no such
           file or directory"
       Error: OCI runtime error: runc: runc create failed: no cgroup mount
           found in mountinfo
   ``ip netns exec`` unmounts /sys and mounts a fresh sysfs for the netns,
   which drops the cgroup mounts under /sys/fs/cgroup (hybrid v1+v2 here).
   (The bridge plugin had already run, so the bridge was left behind in the
   node; host-local released the IP.)
   Fix: our own long-lived mount namespace per env (the "holder" process):
   rbind the host /sys/fs/cgroup aside, mount a fresh sysfs for the node
   netns on /sys (so /sys/class/net shows the node's links, as with
   ``ip netns exec``), and move the cgroup tree back onto /sys/fs/cgroup.
   podman is then run with ``nsenter -t <holder> --mount --net``.
2. A second reason not to use ``ip netns exec``: it makes every mount
   rslave in a throw-away mount namespace, so the netns bind mounts podman
   creates (/run/netns/netns-<uuid>) vanish when that podman process exits;
   the next ``podman rm`` would hand CNI DEL a path that is an empty file.
   The holder's mount namespace lives for the whole env, and /run/netns is
   kept *shared* with the host (every other mount is made slave), so the
   container netns paths are real, host-visible netns mounts, exactly as on
   a real node (a weftd outside this mount namespace can open CNI_NETNS).
3. podman's CNI backend never sets libcni's cache dir, so results are cached
   in /var/lib/cni/results on the host (it did not even exist here).  The
   holder bind-mounts a per-env dir over /var/lib/cni (in its mount
   namespace only).  The empty mount point /var/lib/cni is created on the
   host if missing and deliberately left there: removing it while another
   env has something mounted on it would silently detach that mount.
4. crun fails on this host's hybrid cgroups -> ``--runtime runc``;
   ``--cgroup-manager cgroupfs`` (no systemd).
5. With cgroupfs, podman puts containers and conmon under
   ``libpod_parent/`` (and ``libpod_parent/conmon``) in every hierarchy and
   never removes them.  Each container is run with
   ``--cgroup-parent /weft-e2e-<rand>`` and cleanup() rmdirs that tree.
6. lock_type "shm" (default) shares /dev/shm/libpod_lock with every other
   podman store on the host, and a fresh runroot triggers a "refresh" that
   frees all locks; ``lock_type = "file"`` keeps locks under the env's
   tmp_dir.  Storage is ``--root/--runroot`` in the env's temp dir with the
   ``vfs`` driver (no overlay mounts to leak; the image is 2 MB), so the
   busybox image is imported into each env's store (~0.1 s), never into
   the host store.
7. podman (libcni) *validates every conflist in network_config_dir on every
   command*: it calls VERSION on each plugin of "plugins" (not on the ipam
   plugin) with stdin {"cniVersion": "<conflist cniVersion>"}.  If VERSION
   fails or the answer's supportedVersions lacks the conflist's cniVersion,
   podman only logs
       level=warning msg="Error validating CNI config file .../x.conflist:
           [plugin bridge does not support config version \"1.0.0\"]"
   and then fails with
       Error: unable to find network with name or ID <name>: network not found
   The network name is the conflist's "name", not the file name.
8. Calls seen with cniVersion 1.0.0 (podman 4.3.1 / libcni 1.1): VERSION
   (validation, see 7), ADD and DEL only -- never CHECK, GC or STATUS.
   ``podman stop``/``restart`` do DEL (+ ADD on a new netns).
   Environment: CNI_PATH = cni_plugin_dirs joined with ":" in config order
   (the plugin is looked up in that order too), CNI_ARGS =
   "IgnoreUnknown=1;K8S_POD_NAME=<container name>", CNI_IFNAME=eth0,
   CNI_NETNS=/run/netns/netns-<uuid>, PATH inherited from the caller.
   DEL stdin carries prevResult from the cache (3).  VERSION runs with
   CNI_NETNS/CNI_IFNAME/CNI_PATH set to "dummy".  A dir in cni_plugin_dirs
   that does not exist is tolerated (and still listed in CNI_PATH).
   ``--ip X`` arrives as CNI_ARGS "IP=X", ``--mac-address`` as "MAC=..";
   runtimeConfig is only sent for capabilities the plugin conf declares
   (seen: portMappings for -p, aliases for --network-alias; ``podman
   network reload`` re-ADDs with runtimeConfig.ips = [X, X] instead of IP=).
   cniVersion "1.1.0" passes validation if VERSION claims it, but the ADD
   then fails with
       Error: plugin type="bridge" failed (add): unsupported CNI result
           version "1.1.0"
   (libcni 1.1 knows result types 0.2/0.4/1.0 only) and podman runs DEL.
9. conmon processes that exit are reparented to this VM's PID 1, which
   reaps them only after a while: short-lived "[conmon] <defunct>" zombies
   are expected and harmless.
10. Other host paths podman touches despite --root/--runroot/tmp_dir:
   /var/lib/containers/cache/blob-info-cache-v1.boltdb (written by
   ``podman import``; the holder bind-mounts a per-env dir over
   /var/lib/containers, created empty on the host if missing), runc state in
   /run/runc (containers.conf [engine.runtimes] runc = a wrapper that adds
   ``--root <env>/runc``; ``podman --runtime-flag root=..`` is NOT enough:
   the exit command conmon runs, ``podman container cleanup``, gets
   --root/--runroot/--tmpdir/--network-config-dir/--runtime/--storage-driver
   but not --runtime-flag, so its runc calls used /run/runc; it does inherit
   CONTAINERS_CONF), image copy temp files
   (``image_copy_tmp_dir``), util-linux's /run/mount/utab (``mount -n`` in
   the holder).  A transient /var/tmp/<digits> file created and unlinked
   at once by podman remains.  A first plain ``podman`` call on a pristine
   host creates /var/lib/containers, /run/containers, /run/libpod,
   /etc/containers/networks/netavark.lock and /dev/shm/libpod_lock --
   PodmanEnv never makes such a call (build_busybox_image(podman=None),
   i.e. the host's default store, does).
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import tempfile
import time

BUSYBOX = "/bin/busybox"          # busybox-static: statically linked
BUSYBOX_APPLETS = ("sh", "ip", "ping", "sleep", "nc", "cat", "ifconfig",
                   "route", "wget", "hostname")
DEFAULT_IMAGE = "weft-test-busybox"
DEFAULT_TIMEOUT = 60.0


class HarnessError(RuntimeError):
    pass


def rand_suffix(nbytes: int = 3) -> str:
    return secrets.token_hex(nbytes)


def _run(argv, *, check=True, timeout=DEFAULT_TIMEOUT, env=None, input=None):
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, env=env,
                            input=input, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"timeout after {timeout}s: {argv}") from e
    if check and cp.returncode != 0:
        raise HarnessError(f"{argv} -> rc={cp.returncode}\n"
                           f"stdout: {cp.stdout}\nstderr: {cp.stderr}")
    return cp


# --------------------------------------------------------------------------
# namespaces and root-namespace observation (read-only on the root netns)
# --------------------------------------------------------------------------

def make_netns(prefix: str = "weft-e2e") -> str:
    """Create a uniquely named netns with lo up; return its name."""
    name = f"{prefix}-{rand_suffix()}"
    _run(["ip", "netns", "add", name], timeout=10)
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"], timeout=10)
    except Exception:
        delete_netns(name)
        raise
    return name


def delete_netns(name: str) -> None:
    if os.path.exists(f"/run/netns/{name}"):
        _run(["ip", "netns", "delete", name], check=False, timeout=10)


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def root_links() -> set[tuple[int, str]]:
    """(ifindex, name) of every link in the root netns (read-only)."""
    cp = _run(["ip", "-j", "link", "show"], timeout=10)
    return {(l["ifindex"], l["ifname"]) for l in json.loads(cp.stdout)}


def netns_links(netns: str) -> set[str]:
    cp = _run(["ip", "-n", netns, "-j", "link", "show"], timeout=10)
    return {l["ifname"] for l in json.loads(cp.stdout)}


# --------------------------------------------------------------------------
# image
# --------------------------------------------------------------------------

def build_busybox_rootfs_tar(workdir: str) -> str:
    """rootfs with /bin/busybox + applet symlinks, tarred; returns tar path."""
    rootfs = os.path.join(workdir, "rootfs")
    bindir = os.path.join(rootfs, "bin")
    os.makedirs(bindir, exist_ok=True)
    for d in ("etc", "tmp", "proc", "sys", "dev", "run"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(bindir, "busybox"))
    for applet in BUSYBOX_APPLETS:
        link = os.path.join(bindir, applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    tar = os.path.join(workdir, "busybox-rootfs.tar")
    _run(["tar", "-C", rootfs, "-cf", tar, "."], timeout=30)
    return tar


def build_busybox_image(name: str = DEFAULT_IMAGE, podman=None,
                        workdir: str | None = None) -> str:
    """Import the busybox rootfs as image `name` unless it already exists.

    `podman` is a callable like PodmanEnv.podman (default: host podman and
    its default store).  Returns "localhost/<name>:latest".
    """
    if podman is None:
        def podman(*args, check=True, timeout=DEFAULT_TIMEOUT):
            return _run(["podman", "--runtime", "runc",
                         "--cgroup-manager", "cgroupfs", *args],
                        check=check, timeout=timeout)
    ref = f"localhost/{name}:latest"
    if podman("image", "exists", ref, check=False).returncode == 0:
        return ref
    tmp = tempfile.mkdtemp(prefix="weft-bb-", dir=workdir)
    try:
        tar = build_busybox_rootfs_tar(tmp)
        podman("import", "--change", 'CMD ["/bin/sh"]', tar, ref,
               timeout=120)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ref


# --------------------------------------------------------------------------
# the mount-namespace holder (see quirks 1-3)
# --------------------------------------------------------------------------

# Runs as: nsenter --net=/run/netns/<node> unshare --mount
#            --propagation unchanged python3 -c HOLDER <cg_tmp> <src>=<dst>...
# ("mount -n": do not record the mounts in the host's /run/mount/utab)
_HOLDER = r"""
import os, subprocess, sys
cg_tmp, binds = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
def sh(*a):
    subprocess.run(a, check=True, timeout=30, capture_output=True)
def unescape(p):
    return p.encode().decode("unicode_escape")
mps = []
with open("/proc/self/mountinfo") as f:
    for line in f:
        mps.append(unescape(line.split()[4]))
# Everything slave (nothing we do propagates to the host) except /run/netns,
# which stays in the host's peer group so podman's netns mounts are real.
for mp in mps:
    if mp == "/run/netns" or mp.startswith("/run/netns/"):
        continue
    subprocess.run(["mount", "-n", "--make-slave", mp], timeout=30,
                   capture_output=True)
shared = [l for l in open("/proc/self/mountinfo")
          if "shared:" in l.split(" - ")[0]
          and not unescape(l.split()[4]).startswith("/run/netns")]
if shared:
    sys.exit("mount still shared after make-slave: %r" % shared)
sh("mount", "-n", "--rbind", "/sys/fs/cgroup", cg_tmp)
sh("umount", "-n", "-l", "/sys")
sh("mount", "-n", "-t", "sysfs", "sysfs", "/sys")
sh("mount", "-n", "--move", cg_tmp, "/sys/fs/cgroup")
for src, dst in binds:
    sh("mount", "-n", "--bind", src, dst)
print("ready", flush=True)
sys.stdin.read()          # lives until the harness closes stdin (or dies)
"""


class PodmanEnv:
    """podman + CNI backend, running inside node netns `node_netns`.

    cni_plugin_dirs: searched in order (also passed as CNI_PATH in order).
    conflist_dict: the .conflist content; its "name" is the network name.
    """

    def __init__(self, node_netns: str, cni_plugin_dirs, conflist_dict: dict,
                 *, image: str = DEFAULT_IMAGE, workdir: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, extra_env: dict | None = None):
        if not netns_exists(node_netns):
            raise HarnessError(f"netns {node_netns} does not exist")
        self.node_netns = node_netns
        self.cni_plugin_dirs = [str(d) for d in cni_plugin_dirs]
        self.conflist = conflist_dict
        self.network = conflist_dict["name"]
        self.timeout = timeout
        self.suffix = rand_suffix()
        self.cgroup_parent = f"/weft-e2e-{self.suffix}"
        self.dir = tempfile.mkdtemp(prefix=f"weft-podman-{self.suffix}-",
                                    dir=workdir)
        self.containers: list[str] = []
        self._holder: subprocess.Popen | None = None
        self._cleaned = False
        p = lambda *a: os.path.join(self.dir, *a)
        self.root, self.runroot, self.tmpdir = p("root"), p("runroot"), p("tmp")
        self.net_dir, self.cni_cache = p("net.d"), p("cni-cache")
        self.runc_root, self.runc_wrapper = p("runc"), p("runc-wrapper")
        self.conf_path = p("containers.conf")
        # private stand-ins for host dirs, bind-mounted in the holder's
        # mount namespace only (quirks 3 and 10)
        self.binds = {self.cni_cache: "/var/lib/cni",
                      p("var-lib-containers"): "/var/lib/containers"}
        for d in (self.root, self.runroot, self.tmpdir, self.net_dir,
                  self.runc_root, p("cg"), *self.binds):
            os.makedirs(d, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update(extra_env or {})
        self.env["CONTAINERS_CONF"] = self.conf_path
        try:
            self._write_config()
            self._start_holder()
            self.image = build_busybox_image(image, podman=self.podman,
                                             workdir=self.dir)
        except BaseException:
            self.cleanup()
            raise

    # ---- setup -----------------------------------------------------------
    def _write_config(self):
        q = json.dumps
        with open(self.conf_path, "w") as f:
            f.write(
                "[containers]\n"
                'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                'cgroups = "enabled"\n'
                "[network]\n"
                'network_backend = "cni"\n'
                f"cni_plugin_dirs = {q(self.cni_plugin_dirs)}\n"
                f"network_config_dir = {q(self.net_dir)}\n"
                "[engine]\n"
                'cgroup_manager = "cgroupfs"\n'
                'events_logger = "file"\n'
                f"tmp_dir = {q(self.tmpdir)}\n"
                f"image_copy_tmp_dir = {q(self.tmpdir)}\n"
                'lock_type = "file"\n'
                "[engine.runtimes]\n"
                f"runc = {q([self.runc_wrapper])}\n")
        with open(self.runc_wrapper, "w") as f:
            f.write("#!/bin/sh\n"
                    f"exec {shutil.which('runc') or '/usr/sbin/runc'} "
                    f"--root {self.runc_root} \"$@\"\n")
        os.chmod(self.runc_wrapper, 0o755)
        self.conflist_path = os.path.join(self.net_dir,
                                          f"{self.network}.conflist")
        with open(self.conflist_path, "w") as f:
            json.dump(self.conflist, f, indent=1)

    def _start_holder(self):
        for dst in self.binds.values():        # mount points, quirk 3/10
            os.makedirs(dst, exist_ok=True)
        argv = ["nsenter", f"--net=/run/netns/{self.node_netns}",
                "unshare", "--mount", "--propagation", "unchanged",
                sys.executable, "-c", _HOLDER, os.path.join(self.dir, "cg"),
                *[f"{src}={dst}" for src, dst in self.binds.items()]]
        self._holder = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        # bounded wait for "ready"
        sel = selectors.DefaultSelector()
        sel.register(self._holder.stdout, selectors.EVENT_READ)
        ok = sel.select(timeout=30) and \
            self._holder.stdout.readline().strip() == "ready"
        sel.close()
        if not ok:
            err = self._stop_holder()
            raise HarnessError(f"mount-ns holder failed: {err}")

    def _prefix(self):
        h = self._holder
        if h is None or h.poll() is not None:
            raise HarnessError("mount-ns holder is not running")
        return ["nsenter", "-t", str(h.pid), "--mount", "--net"]

    # ---- API ---------------------------------------------------------------
    def podman(self, *args, check=True, timeout=None, input=None):
        """Run podman in the node's net+mount namespace; CompletedProcess."""
        argv = [*self._prefix(), "podman",
                "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                "--root", self.root, "--runroot", self.runroot,
                "--storage-driver", "vfs", *[str(a) for a in args]]
        return _run(argv, check=check, timeout=timeout or self.timeout,
                    env=self.env, input=input)

    def nsexec(self, *argv, check=True, timeout=None):
        """Run any command where podman runs (node netns, env mount ns).

        E.g. to inspect /run/netns/netns-* or /var/lib/cni/results as the
        plugins see them.  `self.env` (with extra_env) is passed along; libcni
        hands podman's whole environment to the plugins as well.
        """
        return _run([*self._prefix(), *[str(a) for a in argv]], check=check,
                    timeout=timeout or self.timeout, env=self.env)

    def run(self, name: str, network: str | None = None,
            cmd=("sleep", "600"), extra_args=()) -> str:
        """Start a detached container on `network`; return its id."""
        self.containers.append(name)
        cp = self.podman("run", "-d", "--name", name,
                         "--network", network or self.network,
                         "--cgroup-parent", self.cgroup_parent,
                         *extra_args, self.image, *cmd)
        return cp.stdout.strip().splitlines()[-1]

    def exec(self, name: str, cmd, check=True, timeout=None):
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        return self.podman("exec", name, *cmd, check=check, timeout=timeout)

    def inspect(self, name: str) -> dict:
        return json.loads(self.podman("inspect", name).stdout)[0]

    def ip_of(self, name: str, network: str | None = None) -> str:
        nets = self.inspect(name)["NetworkSettings"]["Networks"]
        return nets[network or self.network]["IPAddress"]

    def rm(self, name: str, timeout=None):
        self.podman("rm", "-f", "-t", "0", name, timeout=timeout)
        if name in self.containers:
            self.containers.remove(name)

    def cleanup(self):
        """Idempotent, best effort, removes only what this env created."""
        if self._cleaned:
            return
        self._cleaned = True
        errors = []
        if self._holder is not None and self._holder.poll() is None:
            for name in list(self.containers):
                cp = self.podman("rm", "-f", "-t", "0", "--ignore", name,
                                 check=False)
                if cp.returncode != 0:
                    errors.append(cp.stderr)
            # the store is private to this env, so -a only hits our own
            self.podman("rm", "-a", "-f", "-t", "0", check=False)
        self._stop_holder()
        self._remove_cgroups()
        shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise HarnessError("cleanup: " + "\n".join(errors))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    # ---- internals -------------------------------------------------------
    def _stop_holder(self) -> str:
        """Stop the holder (by its pid); return what it wrote to stderr."""
        h = self._holder
        if h is None or h.stdout.closed:
            return ""
        err = ""
        try:
            if h.poll() is None:
                h.stdin.close()
                try:
                    h.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    h.kill()          # by its own pid, started by us
                    h.wait(timeout=10)
            err = h.stderr.read()
        finally:
            for s in (h.stdin, h.stdout, h.stderr):
                try:
                    s.close()
                except OSError:
                    pass
        return err

    def _remove_cgroups(self):
        rel = self.cgroup_parent.lstrip("/")
        with open("/proc/self/mountinfo") as f:
            mounts = [l.split(" - ") for l in f]
        for pre, post in mounts:
            if post.split()[0] not in ("cgroup", "cgroup2"):
                continue
            top = os.path.join(pre.split()[4], rel)
            if not os.path.isdir(top):
                continue
            for _ in range(50):          # bounded: processes may linger
                for dirpath, _dirs, _files in sorted(
                        os.walk(top), key=lambda t: -t[0].count("/")):
                    try:
                        os.rmdir(dirpath)
                    except OSError:
                        pass
                if not os.path.isdir(top):
                    break
                time.sleep(0.1)
