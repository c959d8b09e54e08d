"""A weft cluster on one machine: an underlay namespace holding a bridge and etcd,
and node namespaces, each with a veth on that bridge and its own weftd.

Pods are namespaces attached by the real `weft` executable running inside their
node's namespace, with the node's subnet file.  Everything is removed by name/PID.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

from .cni import invoke
from .etcd import EtcdCluster, EtcdServer
from .namespaces import file_tail, Namespace, own_view_prefix, sh, stop_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNDERLAY = "192.168.100"
ETCD_IP = f"{UNDERLAY}.254"
UNDERLAY6 = "fd00:100::"      # the IPv6 underlay's /64: node i is fd00:100::i, etcd fd00:100::fe
ETCD_IP6 = f"{UNDERLAY6}fe"
FAMILIES = {"ipv4": (4,), "ipv6": (6,), "dual": (4, 6)}  # Cluster(underlay=...) and Node's
AGENT_STOP_TIMEOUT = 15.0


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll predicate until truthy; bounded in time.  Returns its value or raises."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


def serve_tcp(ns, address: str, port: int, count: int) -> subprocess.Popen:
    """lab.tcp_echo's server inside `ns`; returns once it listens."""
    server = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-m", "lab.tcp_echo",
                               "serve", address, str(port), str(count)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    server.stdout.readline()  # "listening"
    return server


class Pod:
    def __init__(self, node, network, ns, cid, ifname, result):
        self.node, self.network, self.ns, self.cid, self.ifname, self.result = \
            node, network, ns, cid, ifname, result
        self.ips = [ip["address"].split("/")[0] for ip in result["ips"]]
        self.ip = self.ips[0]

    def serve_tcp(self, port: int, count: int) -> subprocess.Popen:
        """A TCP responder on this pod's first address answering `count` connections."""
        return serve_tcp(self.ns, self.ip, port, count)

    def tcp(self, address: str, port: int, payload: str = None):
        """The source address the server saw (None when unreachable)."""
        out = self.ns.run([sys.executable, "-m", "lab.tcp_echo", "ask", address, str(port),
                           *([payload] if payload else [])],
                          check=False, cwd=REPO)
        return out.stdout.strip() if out.returncode == 0 else None

    def ping(self, address, count=1, wait=2) -> bool:
        flag = ["-6"] if ":" in address else []
        return self.ns.run(["ping", *flag, "-c", str(count), "-W", str(wait), address],
                           check=False, timeout=count * wait + 10).returncode == 0


class Node:
    def __init__(self, cluster, index: int, underlay: str = None):
        """underlay: "ipv4", "ipv6" or "dual" (default: the cluster's): the addresses of
        eth0, and the --public-ip/--public-ipv6 flags weftd gets."""
        self.cluster = cluster
        self.index = index
        self.name = f"node{index}"
        self.ns = Namespace(f"wn{index}")
        self.families = FAMILIES[underlay or cluster.underlay_family]
        self.ip = f"{UNDERLAY}.{index}" if 4 in self.families else None
        self.ip6 = f"{UNDERLAY6}{index:x}" if 6 in self.families else None
        self.dir = os.path.join(cluster.workdir, self.name)
        self.run_dir = os.path.join(self.dir, "run")
        self.state_dir = os.path.join(self.dir, "state")
        self.ipam_dir = os.path.join(self.dir, "ipam")
        self.log_path = os.path.join(self.dir, "weftd.log")
        os.makedirs(self.dir, exist_ok=True)
        self.agent = None
        self.agent_forked = False
        self.pods = []
        self._wire()

    def _wire(self):
        underlay = self.cluster.underlay.name
        port = f"ul{self.index}-{self.ns.name[-6:]}"
        sh(["ip", "-n", underlay, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", self.ns.name])
        sh(["ip", "-n", underlay, "link", "set", port, "master", "ul0", "up"])
        if self.ip:
            self.ns.run(["ip", "addr", "add", f"{self.ip}/24", "dev", "eth0"])
        if self.ip6:
            self.ns.run(["ip", "addr", "add", f"{self.ip6}/64", "dev", "eth0", "nodad"])
        self.ns.run(["ip", "link", "set", "eth0", "up"])

    # -- the agent ------------------------------------------------------------
    def etcd_endpoint(self) -> str:
        """etcd as this node reaches it: over IPv6 when it has no IPv4 underlay."""
        etcd = self.cluster.etcd
        if self.ip is None and getattr(etcd, "also_on", ()):
            return etcd.also_endpoints()[0]
        return etcd.endpoint

    def underlay_flags(self) -> list:
        return [*(["--public-ip", self.ip] if self.ip else []), *(["--public-ipv6", self.ip6] if self.ip6 else [])]

    def start_agent(self, networks=("weft",), extra=(), enter=None, own_view=False, weftd=None, discover=False):
        """enter: argv prefix that runs a command in this node (default `ip netns exec`;
        e.g. a container runtime's mount namespace, so the agent opens the pod netns
        paths the runtime hands to CNI).  own_view: the agent in this node's network
        namespace but mount and PID namespaces of its own (namespaces.own_view: it sees
        neither /run/netns nor the node's processes).  weftd: another weftd executable
        (e.g. the previous version's, lab/previous.py).  discover: `--iface eth0` instead of
        the address flags (weftd finds the underlay addresses itself)."""
        exe = weftd or os.path.join(self.cluster.installed, "bin", "weftd")
        if own_view:
            enter = own_view_prefix(self.ns.name)
        self.agent_forked = own_view
        args = [*(enter or ["ip", "netns", "exec", self.ns.name]), exe,
                "--etcd-endpoints", self.etcd_endpoint(), "--node-name", self.name,
                *(["--iface", "eth0"] if discover else self.underlay_flags()), "--run-dir", self.run_dir, "--state-dir", self.state_dir,
                "--ipam-data-dir", self.ipam_dir, "--reconcile-interval",
                str(self.cluster.reconcile_interval), "--metrics-addr", "127.0.0.1:9465",
                *self.cluster.etcd_flags()]
        for network in networks:
            args += ["--network", network]
        env = dict(os.environ)
        if self.cluster.etcd.auth:
            env["WEFTD_ETCD_PASSWORD"] = self.cluster.etcd.client_kwargs()["password"]
        for name in os.listdir(self.run_dir) if os.path.isdir(self.run_dir) else ():
            if name.endswith(".status.json"):  # a previous run's "ready" must not answer wait_ready
                os.unlink(os.path.join(self.run_dir, name))
        log = open(self.log_path, "ab")
        self.agent = subprocess.Popen([*args, *extra], stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, env=env)
        log.close()
        return self.agent

    def stop_agent(self, sig=signal.SIGTERM):
        agent, self.agent = self.agent, None
        if agent is not None and self.agent_forked and agent.poll() is None:
            try:  # the wrapper ignores SIGTERM and exits with its child: signal weftd itself
                os.kill(self._forked_child(agent.pid), sig)
                agent.wait(timeout=AGENT_STOP_TIMEOUT)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass  # stop_process below ends the wrapper, and its --kill-child weftd
        stop_process(agent, AGENT_STOP_TIMEOUT, sig)

    def agent_pid(self) -> int:
        """weftd's own PID (under own_view, the one child of the unshare wrapper)."""
        return self._forked_child(self.agent.pid) if self.agent_forked else self.agent.pid

    @staticmethod
    def _forked_child(pid: int) -> int:
        def child():
            with open(f"/proc/{pid}/task/{pid}/children") as handle:
                return handle.read().split()

        return int(wait_for(child, 10, what=f"the child of agent wrapper {pid}")[0])

    def agent_threads(self) -> int:
        return len(os.listdir(f"/proc/{self.agent_pid()}/task"))

    def agent_descriptors(self) -> list:
        """What weftd holds open, sorted: 'namespace <inode>' for a namespace (however it
        was opened: its link text is then a path or '/'), else the link's target in
        /proc/<pid>/fd (a socket, a pipe, a file)."""
        directory = f"/proc/{self.agent_pid()}/fd"
        nsfs = os.stat("/proc/self/ns/net").st_dev
        found = []
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            try:
                target = os.stat(path)
                found.append(f"namespace {target.st_ino}" if target.st_dev == nsfs else os.readlink(path))
            except OSError:
                continue  # closed while we looked
        return sorted(found)

    def subnet_file(self, network="weft") -> str:
        return os.path.join(self.run_dir, f"{network}.env")

    def status(self, network="weft"):
        try:
            with open(os.path.join(self.run_dir, f"{network}.status.json")) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return None

    def wait_ready(self, network="weft", timeout=30.0):
        return self.wait_status(lambda status: status.get("ready"), timeout, f"ready on {network}", network)

    def wait_status(self, predicate, timeout: float, what: str, network="weft", lines=15):
        """predicate(status) polled until truthy; on timeout the error carries the status
        and the agent log's tail (the log is gone with the test's directory)."""
        try:
            return wait_for(lambda: predicate(self.status(network) or {}), timeout,
                            what=f"{self.name} {what} (log {self.log_path})")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; status {self.status(network)}; log tail:\n"
                               f"{file_tail(self.log_path, lines)}") from None

    def http(self, path: str):
        """(status code, body) from the agent's metrics endpoint inside the node."""
        code = ("import sys, urllib.request, urllib.error\n"
                "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=5); print(r.status); print(r.read().decode())\n"
                "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\n")
        out = self.ns.run([sys.executable, "-c", code, f"http://127.0.0.1:9465{path}"], check=False).stdout
        status, _, body = out.partition("\n")
        return int(status or 0), body

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def plugin_log(self) -> list:
        """The records of weft's per-call log (the netconf's logFile, node.dir/weft.log):
        one dict per call weft served, e.g. {"command": "STATUS", "exit": 0, "via": "agent"}."""
        try:
            with open(os.path.join(self.dir, "weft.log")) as handle:
                return [json.loads(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return []

    # -- pods ------------------------------------------------------------------
    def netconf(self, network="weft", bridge="cbr0", **overrides) -> dict:
        conf = {"cniVersion": "1.0.0", "name": network, "type": "weft", "bridge": bridge,
                "subnetFile": self.subnet_file(network), "dataDir": os.path.join(self.dir, "weft"),
                "logFile": os.path.join(self.dir, "weft.log"),
                "ipam": {"type": "weft-ipam", "dataDir": self.ipam_dir}}
        conf.update(overrides)
        return conf

    def add_pod(self, network="weft", ifname="eth0", ns=None, conf=None, name=None,
                pod_namespace="default") -> Pod:
        cni = os.path.join(self.cluster.installed, "cni")
        made = ns is None
        ns = ns or Namespace(f"wp{self.index}")
        cid = f"{self.name}-{ns.name}-{ifname}"
        pod_name = name or ns.name
        try:
            out = invoke(f"{cni}/weft", "ADD", conf or self.netconf(network), container_id=cid,
                         netns=ns.path, ifname=ifname, cni_path=cni, node=self.ns,
                         args=f"K8S_POD_NAMESPACE={pod_namespace};K8S_POD_NAME={pod_name}")
            if out.code != 0:
                raise RuntimeError(f"ADD on {self.name} failed: {out}")
        except BaseException:
            if made:  # no Pod holds it, so nothing else would remove it
                ns.delete()
            raise
        pod = Pod(self, network, ns, cid, ifname, out.json)
        self.pods.append(pod)
        return pod

    def delete_pod(self, pod, conf=None):
        cni = os.path.join(self.cluster.installed, "cni")
        return invoke(f"{cni}/weft", "DEL", conf or self.netconf(pod.network), container_id=pod.cid,
                      netns=pod.ns.path, ifname=pod.ifname, cni_path=cni, node=self.ns)

    # -- wireguard-go processes (they outlive weftd by design) ------------------
    def wireguard_pids(self) -> dict:
        """{device: PID} of the wireguard-go processes this node's agent started and that
        still run (read from <run-dir>/wireguard/<dev>.pid, checked against /proc)."""
        found = {}
        directory = os.path.join(self.run_dir, "wireguard")
        for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
            if not name.endswith(".pid"):
                continue
            try:
                pid = int(open(os.path.join(directory, name)).read().strip())
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except (OSError, ValueError):
                continue
            if any(arg.endswith(b"wireguard-go") for arg in cmdline):
                found[name[:-len(".pid")]] = pid
        return found

    def wg(self, *args) -> str:
        """`wg` (wireguard-tools) against this node's wireguard-go, inside its mount and
        network namespaces: an oracle independent of weft's UAPI client.  Never `dump`
        or `showconf` (they print the private key)."""
        device = args[1] if len(args) > 1 else None
        pid = self.wireguard_pids()[device]
        return sh(["nsenter", "-t", str(pid), "-m", "-n", "wg", *args]).stdout

    def stop_wireguard(self):
        for pid in self.wireguard_pids().values():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 5
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.05)

    def cleanup(self):
        self.stop_agent()
        self.stop_wireguard()
        for pod in self.pods:
            pod.ns.delete()
        self.ns.delete()


def descriptors_kept(before: list, after: list, new_threads: int) -> list:
    """What weftd kept open between two listings (Node.agent_descriptors) that no new
    thread explains: every descriptor gained that is not a socket (a namespace, FIFO or
    file; open(2) never yields a socket, so no descriptor weft's forwarder hands over is
    one), and sockets beyond one per thread started in between (each CNI worker keeps
    its own libnftables context and its netlink socket: datapath/nft.py)."""
    gained = Counter(after) - Counter(before)
    kept = sorted(d for d in gained.elements() if not d.startswith("socket:"))
    sockets = sum(d.startswith("socket:") for d in after) - sum(d.startswith("socket:") for d in before)
    if sockets > max(new_threads, 0):
        kept.append(f"{sockets} more sockets, {new_threads} more threads")
    return kept


class Cluster:
    def __init__(self, workdir, installed, etcd_tls=False, etcd_auth=False, reconcile_interval=2.0,
                 etcd_members=1, underlay="ipv4"):
        """etcd_members > 1: an EtcdCluster on ETCD_IP, .253, .252 ... (no TLS/auth); the
        agents and weftctl get every member's endpoint.  underlay: "ipv4", "ipv6" (no IPv4
        address on the underlay: etcd on ETCD_IP6) or "dual" (both; etcd on IPv4); a node
        may be given its own (add_node)."""
        self.workdir = str(workdir)
        self.underlay_family = underlay
        families = FAMILIES[underlay]
        self.installed = str(installed)
        self.reconcile_interval = reconcile_interval
        self.allow_internal_errors = False  # set by a test that injects a bug on purpose
        self.nodes = []
        self.underlay = Namespace("wul")
        try:
            self.underlay.run(["ip", "link", "add", "ul0", "type", "bridge"])
            hosts = [f"{UNDERLAY}.{254 - i}" for i in range(etcd_members)] if 4 in families else \
                [f"{UNDERLAY6}{0xfe - i:x}" for i in range(etcd_members)]
            also_on = ()
            if 4 in families and 6 in families:  # nodes with only an IPv6 underlay reach etcd too
                self.underlay.run(["ip", "addr", "add", f"{ETCD_IP6}/64", "dev", "ul0", "nodad"])
                also_on = (f"[{ETCD_IP6}]",)
            for host in hosts:
                self.underlay.run(["ip", "addr", "add", f"{host}/{24 if '.' in host else 64}", "dev", "ul0",
                                   *(["nodad"] if ":" in host else [])])
            self.underlay.run(["ip", "link", "set", "ul0", "up"])
            hosts = [f"[{h}]" if ":" in h else h for h in hosts]  # as URLs spell them
            if etcd_members > 1:
                if etcd_tls or etcd_auth:
                    raise ValueError("Cluster: a multi-member etcd runs without TLS and auth here")
                self.etcd = EtcdCluster(os.path.join(self.workdir, "etcd"), etcd_members,
                                        netns=self.underlay.name, hosts=hosts)
            else:
                self.etcd = EtcdServer(os.path.join(self.workdir, "etcd"), tls=etcd_tls, auth=etcd_auth,
                                       netns=self.underlay.name, host=hosts[0], also_on=also_on)
            self.etcd.start()
        except BaseException:
            self.underlay.delete()
            raise

    def etcd_flags(self) -> list:
        flags = []
        kwargs = self.etcd.client_kwargs()
        for key, flag in (("cafile", "--etcd-cafile"), ("certfile", "--etcd-certfile"),
                          ("keyfile", "--etcd-keyfile"), ("username", "--etcd-username")):
            if kwargs.get(key):
                flags += [flag, kwargs[key]]
        return flags

    def add_node(self, underlay: str = None) -> Node:
        node = Node(self, len(self.nodes) + 1, underlay)
        self.nodes.append(node)
        return node

    def start_nodes(self, count: int, config: dict, network: str = "weft", mesh_timeout: float = 20.0,
                    discover: bool = False) -> list:
        """Store the network config, add `count` nodes each running weftd, and wait until
        every agent is ready and has programmed every other node's lease."""
        self.set_network(network, config)
        nodes = [self.add_node() for _ in range(count)]
        for node in nodes:
            node.start_agent(networks=(network,), discover=discover)
        for node in nodes:
            node.wait_ready(network)
        for node in nodes:
            wait_for(lambda: len(node.status(network)["peers"]) == count - 1, mesh_timeout,
                     what=f"{node.name} meshed with {count - 1} peers")
        return nodes

    def weftctl(self, *args, check=True):
        """weftctl inside the underlay namespace (where etcd is reachable)."""
        exe = os.path.join(self.installed, "bin", "weftctl")
        env = dict(os.environ)
        if self.etcd.auth:
            env["WEFTD_ETCD_PASSWORD"] = self.etcd.client_kwargs()["password"]
        command = args[0] if args[0] in ("network", "leases", "whois", "apply", "delete", "policy") \
            and args[:2] != ("policy", "denials") or args[:2] == ("status", "--cluster") else None
        extra = ["--etcd-endpoints", self.etcd.endpoint, *self.etcd_flags()] if command else []
        proc = subprocess.run(["ip", "netns", "exec", self.underlay.name, exe, *args, *extra],
                              capture_output=True, text=True, timeout=60, env=env)
        if check and proc.returncode != 0:
            raise RuntimeError(f"weftctl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def set_network(self, name: str, config: dict):
        return self.weftctl("network", "set", name, "--config", json.dumps(config))

    def set_network_raw(self, config: dict, *flags: str, name: str = "weft"):
        """`weftctl network set` that may fail: the CompletedProcess (exit code, stdout, stderr)."""
        return self.weftctl("network", "set", name, "--config", json.dumps(config), *flags, check=False)

    def namespace_names(self) -> list:
        names = [self.underlay.name]
        for node in self.nodes:
            names += [node.ns.name] + [pod.ns.name for pod in node.pods]
        return names

    def internal_errors(self) -> list:
        """Log lines of every node's weftd that carry a traceback: a bug caught by a
        controller guard still fails the test that triggered it."""
        return [f"{node.name}: {line[:2000]}" for node in self.nodes for line in node.log().splitlines()
                if '"traceback": ' in line or line.startswith("Traceback (most recent call last)")]

    def cleanup(self):
        for node in self.nodes:
            node.cleanup()
        errors = [] if self.allow_internal_errors else self.internal_errors()  # shutdown included
        self.etcd.cleanup()
        self.underlay.delete()
        shutil.rmtree(self.workdir, ignore_errors=True)
        assert not errors, "weftd logged internal errors:\n" + "\n".join(errors[:5])
