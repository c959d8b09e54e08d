"""Throwaway etcd for tests and demos (no pytest import): one member, or a cluster.

    server = EtcdServer(workdir, tls=True, auth=True)
    server.start()
    registry = Registry([server.endpoint], **server.client_kwargs())
    ...
    server.cleanup()

Every server listens on 127.0.0.1 ports picked by the kernel (or, with netns=,
on `host` inside a namespace a test made, so node namespaces can reach it), keeps
its data, certificates and log in its own workdir, and is stopped by its own PID only.

    members = EtcdCluster(workdir, size=3, netns=underlay, hosts=[...])
    members.start()          # every member spawned, then each waited for
    members.endpoint         # "http://a:2379,http://b:2379,http://c:2379" (etcdctl, weftd)
    members.leader()         # the EtcdServer that leads now
    members.cleanup()
"""

import atexit
import json
import os
import shutil
import socket
import subprocess
import time

from .namespaces import file_tail, stop_process

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
ETCDCTL_TIMEOUT = 20.0
ROOT_PASSWORD = "root-secret"
WEFT_USER = "weft"
WEFT_PASSWORD = "weft-secret"
WEFT_PREFIX = "/weft/"


class EtcdError(RuntimeError):
    """The test etcd could not be started or driven; the message carries its log tail."""


def free_port() -> int:
    """A localhost TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def openssl(*args: str, cwd: str) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise EtcdError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


class Certificates:
    """A CA, a server certificate for 127.0.0.1/localhost (and the server's own address)
    and a client certificate (EC P-256)."""

    def __init__(self, directory: str, host: str = "127.0.0.1"):
        self.dir = directory
        self.host = host
        self.ca = os.path.join(directory, "ca.crt")
        self.server_cert = os.path.join(directory, "server.crt")
        self.server_key = os.path.join(directory, "server.key")
        self.client_cert = os.path.join(directory, "client.crt")
        self.client_key = os.path.join(directory, "client.key")

    def generate(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        if os.path.exists(self.client_cert):
            return
        openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=weft-test-ca",
                cwd=self.dir)
        extra_ip = f",IP:{self.host}" if self.host != "127.0.0.1" else ""
        self._issue("server", "localhost", f"subjectAltName=IP:127.0.0.1{extra_ip},DNS:localhost\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n")
        self._issue("client", WEFT_USER, "extendedKeyUsage=clientAuth\n")

    def _issue(self, name: str, common_name: str, extensions: str) -> None:
        ext = os.path.join(self.dir, f"{name}.ext")
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                    + extensions)
        openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name}", cwd=self.dir)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", ext, cwd=self.dir)


class EtcdServer:
    """One etcd member on 127.0.0.1 with its data, log and certificates in workdir."""

    def __init__(self, workdir, tls: bool = False, auth: bool = False, extra_args=(),
                 netns: str = None, host: str = "127.0.0.1", name: str = None, also_on=()):
        """also_on: more hosts (URL form, e.g. "[fd00::fe]") clients may reach it on."""
        self.workdir = os.path.abspath(str(workdir))
        self.netns = netns
        self.host = host
        self.also_on = tuple(also_on)
        self.tls = tls
        self.auth = auth
        self.extra_args = list(extra_args)
        self.name = name or "weft-" + os.path.basename(self.workdir.rstrip("/"))[-20:]
        self.initial_cluster = None  # set by EtcdCluster: "name=peer-url,..." of every member
        self.cluster_token = None
        self.data_dir = os.path.join(self.workdir, "data")
        self.log_path = os.path.join(self.workdir, "etcd.log")
        self.certs = Certificates(os.path.join(self.workdir, "pki"), host)
        # a namespace of the test's own has every port free
        self.client_port = 2379 if netns else None
        self.peer_port = 2380 if netns else None
        self.process = None
        self._auth_ready = False
        atexit.register(self.stop)

    # ---- addresses and client settings ----

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client_port}"

    def also_endpoints(self) -> list:
        return [f"{self.scheme}://{host}:{self.client_port}" for host in self.also_on]

    @property
    def pid(self):
        return self.process.pid if self.process else None

    def client_kwargs(self) -> dict:
        """Keyword arguments for Registry(...) that let the weft user in."""
        kwargs = {}
        if self.tls:
            kwargs.update(cafile=self.certs.ca, certfile=self.certs.client_cert, keyfile=self.certs.client_key)
        if self.auth:
            kwargs.update(username=WEFT_USER, password=WEFT_PASSWORD)
        return kwargs

    def etcdctl(self, *args: str, check: bool = False, timeout: float = ETCDCTL_TIMEOUT, endpoints=None):
        """Run etcdctl (API v3) against this server (or `endpoints`, a comma-separated list)
        as root; CompletedProcess with text output."""
        cmd = self._in_netns([ETCDCTL, f"--endpoints={endpoints or self.endpoint}", "--dial-timeout=3s",
                              "--command-timeout=5s"])
        if self.tls:
            cmd += [f"--cacert={self.certs.ca}", f"--cert={self.certs.client_cert}",
                    f"--key={self.certs.client_key}"]
        if self._auth_ready:
            cmd += [f"--user=root:{ROOT_PASSWORD}"]
        env = dict(os.environ, ETCDCTL_API="3")
        for name in ("ETCDCTL_ENDPOINTS", "ETCDCTL_USER", "ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY"):
            env.pop(name, None)
        proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise EtcdError(f"etcdctl {' '.join(args)} failed ({proc.returncode}): "
                            f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    # ---- lifecycle ----

    def start(self) -> None:
        """Start etcd (reusing its ports and data on a restart) and wait until it is healthy."""
        if self.process is not None and self.process.poll() is None:
            return
        if self.tls:
            self.certs.generate()
        fresh_ports = self.client_port is None
        for attempt in range(3):
            if fresh_ports:
                self.client_port, self.peer_port = free_port(), free_port()
            self._spawn()
            if self._wait_healthy():
                break
            log = self.log_tail()
            self.stop()
            if not (fresh_ports and "address already in use" in log):
                raise EtcdError(f"etcd did not become healthy within {START_TIMEOUT:.0f}s "
                                f"(log {self.log_path}):\n{log}")
        else:
            raise EtcdError("etcd could not find free ports after 3 attempts")
        if self.auth and not self._auth_ready:
            try:
                self._enable_auth()
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """SIGTERM our own etcd, wait, SIGKILL if it lingers. Safe to call twice."""
        process, self.process = self.process, None
        stop_process(process, STOP_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL our own etcd at once (a crash, not a shutdown)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop etcd and remove the workdir."""
        self.stop()
        atexit.unregister(self.stop)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        return file_tail(self.log_path, lines)

    # ---- internals ----

    def _command(self) -> list:
        client_url = self.endpoint
        peer_url = f"http://{self.host}:{self.peer_port}"
        cmd = [ETCD, "--name", self.name, "--data-dir", self.data_dir,
               "--listen-client-urls", ",".join([client_url] + self.also_endpoints()),
               "--advertise-client-urls", client_url,
               "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
               "--initial-cluster", self.initial_cluster or f"{self.name}={peer_url}",
               "--initial-cluster-state", "new", "--initial-cluster-token", self.cluster_token or self.name,
               "--logger", "zap", "--log-outputs", "stderr"]
        if self.tls:
            cmd += ["--cert-file", self.certs.server_cert, "--key-file", self.certs.server_key,
                    "--trusted-ca-file", self.certs.ca, "--client-cert-auth"]
        return self._in_netns(cmd + self.extra_args)

    def _in_netns(self, cmd: list) -> list:
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def _spawn(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self._command(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.workdir)

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.etcdctl("endpoint", "health", timeout=10).returncode == 0:
                return True
            time.sleep(0.1)
        return False

    def _enable_auth(self) -> None:
        """root (password) and weft (readwrite on /weft/), then `auth enable`."""
        steps = [
            ("user", "add", "root", f"--new-user-password={ROOT_PASSWORD}", "--interactive=false"),
            ("user", "grant-role", "root", "root"),
            ("user", "add", WEFT_USER, f"--new-user-password={WEFT_PASSWORD}", "--interactive=false"),
            ("role", "add", WEFT_USER),
            ("role", "grant-permission", WEFT_USER, "--prefix=true", "readwrite", WEFT_PREFIX),
            ("user", "grant-role", WEFT_USER, WEFT_USER),
            ("auth", "enable"),
        ]
        for step in steps:
            proc = self.etcdctl(*step)
            if proc.returncode != 0 and "already" not in proc.stderr:
                raise EtcdError(f"etcdctl {' '.join(step)} failed: {proc.stderr.strip()}")
        self._auth_ready = True


class EtcdCluster:
    """`size` etcd members forming one cluster (plain HTTP, no auth), each an EtcdServer
    with its own data dir, log and PID.  With netns=, member i listens on hosts[i]:2379
    (peers on :2380) inside that namespace; without, on 127.0.0.1 ports picked now.

    Quacks like an EtcdServer where tests and lab.cluster need it (endpoint, etcdctl,
    client_kwargs, tls/auth, stop/start/cleanup), so a Cluster can run on either."""

    tls = False
    auth = False

    def __init__(self, workdir, size: int = 3, netns: str = None, hosts=None):
        self.workdir = os.path.abspath(str(workdir))
        hosts = list(hosts or ["127.0.0.1"] * size)
        if len(hosts) != size:
            raise EtcdError(f"EtcdCluster: {size} members need {size} hosts, got {hosts}")
        token = "weft-" + os.path.basename(self.workdir.rstrip("/"))[-16:]
        self.members = []
        for index, host in enumerate(hosts):
            member = EtcdServer(os.path.join(self.workdir, f"m{index}"), netns=netns, host=host,
                                name=f"{token}-m{index}")
            member.cluster_token = token
            if not netns:
                member.client_port, member.peer_port = free_port(), free_port()
            self.members.append(member)
        initial = ",".join(f"{m.name}=http://{m.host}:{m.peer_port}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def endpoint(self) -> str:
        """Every member's client URL, comma-separated (what --etcd-endpoints takes)."""
        return ",".join(m.endpoint for m in self.members)

    @property
    def endpoints(self) -> list:
        return [m.endpoint for m in self.members]

    def client_kwargs(self) -> dict:
        return {}

    def etcdctl(self, *args: str, check: bool = False, timeout: float = ETCDCTL_TIMEOUT):
        """etcdctl against every running member (its client picks one that answers)."""
        live = [m.endpoint for m in self.members if m.process is not None] or self.endpoints
        return self.members[0].etcdctl(*args, check=check, timeout=timeout, endpoints=",".join(live))

    def start(self) -> None:
        """Spawn every stopped member, then wait for each: a new member is only healthy
        once a quorum of its peers runs."""
        waiting = [m for m in self.members if m.process is None or m.process.poll() is not None]
        for member in waiting:
            os.makedirs(member.workdir, exist_ok=True)
            member._spawn()
        for member in waiting:
            if not member._wait_healthy():
                log = member.log_tail()
                self.stop()
                raise EtcdError(f"etcd member {member.name} did not become healthy within "
                                f"{START_TIMEOUT:.0f}s (log {member.log_path}):\n{log}")

    def member_status(self, member: EtcdServer):
        """etcdctl endpoint status of one member as a dict (None when it does not answer)."""
        proc = member.etcdctl("endpoint", "status", "-w", "json", timeout=10)
        if proc.returncode != 0:
            return None
        try:
            rows = json.loads(proc.stdout)
        except ValueError:
            return None
        return rows[0]["Status"] if rows else None

    def leader(self):
        """The running member that leads now, or None (no quorum, or an election under way)."""
        for member in self.members:
            if member.process is None:
                continue
            status = self.member_status(member)
            if status and status.get("leader") and status["leader"] == status["header"]["member_id"]:
                return member
        return None

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    def cleanup(self) -> None:
        for member in self.members:
            member.cleanup()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 10) -> str:
        return "\n".join(f"--- {m.name}\n{m.log_tail(lines)}" for m in self.members)
