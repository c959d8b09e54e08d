"""The four CNI contenders, each on its own bridge/subnet in its own node namespace.

  go               bridge + host-local of CNI plugins 1.9.1 (build/runtimes, `make deps`)
                   at cniVersion 1.1.0: the reference Go chain, the ratios' denominator
  go-1.1           the same from Debian 12's plugins 1.1.1 (/usr/lib/cni) at 1.0.0, the
                   reference of earlier runs, kept for comparison
  weft-standalone  weft with agentSocket pointing where nobody listens (handlers run per exec)
  weft-agent       weft forwarding to a weftd running in that node namespace

All are called the same way: lab.cni.invoke runs the executable inside the node
namespace (`ip netns exec`), with the same environment shape and a netconf that
asks for the same thing (bridge, gateway address on it, default route in the pod,
no masquerade, one /16 range).
"""

import os
import socket
import subprocess
import time

from lab import netns_batch, runtimes
from lab.cni import invoke
from lab.namespaces import stop_process

from .context import ensure_dir, rss_mib
from .family import kinds_of, pod_range

GO, GO_11, STANDALONE, AGENT = "go", "go-1.1", "weft-standalone", "weft-agent"
KINDS = (GO, GO_11, STANDALONE, AGENT)
REFERENCES = (GO, GO_11)
LABELS = {GO: "Go bridge+host-local 1.9.1", GO_11: "Go bridge+host-local 1.1", STANDALONE: "weft standalone",
          AGENT: "weft agent"}
PLUGINS_11 = "/usr/lib/cni"  # Debian 12's containernetworking-plugins 1.1.1
CNI_VERSION = "1.0.0"
REFERENCE_CNI_VERSION = {GO: "1.1.0", GO_11: "1.0.0"}  # the newest each release speaks


def reference_plugins(kind: str) -> str:
    """The directory of a reference contender's Go plugins."""
    return runtimes.cni_plugins_19() if kind == GO else PLUGINS_11
AGENT_START_TIMEOUT = 30.0
AGENT_STOP_TIMEOUT = 15.0
CALL_TIMEOUT = 120


def cni_args(pod: str, cid: str) -> str:
    """What kubelet passes (the Go plugins need IgnoreUnknown for the K8S_ keys)."""
    return f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={cid}"


BENCH_PUBLIC_IP = "198.51.100.1"  # TEST-NET-2, only ever inside the bench's node namespaces

class Contender:
    def __init__(self, ctx, kind: str, index: int, tag: str, family: int = 4):
        self.ctx = ctx
        self.kind = kind
        self.family = family
        self.label = LABELS[kind]
        self.dir = ensure_dir(os.path.join(ctx.work, tag, kind if family == 4 else f"{kind}-ipv{family}"))
        self.subnet = pod_range(family, 100 + index)  # an IPv4 /16 or an IPv6 /64
        self.node = ctx.namespace(f"wbn{index}")
        self.agent = None
        self.agent_log = os.path.join(self.dir, "weftd.log")
        self.socket = os.path.join(self.dir, "run", "weftd.sock")
        bridge = {GO: "gobr0", GO_11: "go11br0", STANDALONE: "wsabr0", AGENT: "wagbr0"}[kind]
        ipam = {"dataDir": os.path.join(self.dir, "ipam"), "ranges": [[{"subnet": self.subnet}]]}
        common = {"cniVersion": CNI_VERSION, "name": f"bench-{kind}", "bridge": bridge,
                  "isGateway": True, "isDefaultGateway": True, "ipMasq": False}
        if kind in REFERENCES:
            plugins = reference_plugins(kind)
            self.executable, self.cni_path = f"{plugins}/bridge", plugins
            self.conf = {**common, "cniVersion": REFERENCE_CNI_VERSION[kind], "type": "bridge",
                         "ipam": {"type": "host-local", **ipam}}
        else:
            cni = os.path.join(ctx.installed, "cni")
            self.executable, self.cni_path = f"{cni}/weft", cni
            sock = self.socket if kind == AGENT else os.path.join(self.dir, "nobody-listens.sock")
            # subnetFile: unused with explicit ranges, but the port records live beside it;
            # in the bench's own tree they go with it, fill attachments included
            self.conf = {**common, "type": "weft", "agentSocket": sock,
                         "subnetFile": os.path.join(self.dir, "run", f"bench-{kind}.env"),
                         "dataDir": os.path.join(self.dir, "weft"),
                         "logFile": os.path.join(self.dir, "weft.log"),
                         "ipam": {"type": "weft-ipam", **ipam}}
        if kind == AGENT:
            self.start_agent()

    # -- the agent -------------------------------------------------------------
    def start_agent(self):
        """weftd inside this node namespace; its CNI socket serves without etcd."""
        exe = os.path.join(self.ctx.installed, "bin", "weftd")
        # weftd refuses a loopback public IP (other nodes would refuse its leases): a
        # documentation address on the loopback link of this bench's own node namespace
        subprocess.run(["ip", "-n", self.node.name, "addr", "replace", f"{BENCH_PUBLIC_IP}/32", "dev", "lo"],
                       check=True, capture_output=True)
        args = ["ip", "netns", "exec", self.node.name, exe,
                "--run-dir", os.path.dirname(self.socket), "--state-dir", os.path.join(self.dir, "state"),
                "--ipam-data-dir", os.path.join(self.dir, "ipam"), "--etcd-endpoints", "http://127.0.0.1:1",
                "--network", "none", "--public-ip", BENCH_PUBLIC_IP, "--metrics-addr", "127.0.0.1:9465",
                "--node-name", f"bench-{self.node.name}"]
        with open(self.agent_log, "ab") as log:
            self.agent = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + AGENT_START_TIMEOUT
        while not self._socket_answers():
            if self.agent.poll() is not None:
                raise RuntimeError(f"weftd exited ({self.agent.returncode}); log {self.agent_log}:\n"
                                   + self.agent_log_text()[-2000:])
            if time.monotonic() > deadline:
                raise TimeoutError(f"weftd socket {self.socket} not answering after {AGENT_START_TIMEOUT}s")
            time.sleep(0.05)

    def _socket_answers(self) -> bool:
        if not os.path.exists(self.socket):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.socket)
                return True
            except OSError:
                return False

    def agent_log_text(self) -> str:
        try:
            with open(self.agent_log, errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def agent_rss(self):
        return rss_mib(self.agent.pid) if self.agent and self.agent.poll() is None else None

    def stop_agent(self):
        agent, self.agent = self.agent, None
        stop_process(agent, AGENT_STOP_TIMEOUT)

    # -- calls -----------------------------------------------------------------
    def call(self, command: str, pod_ns: str, cid: str):
        """(milliseconds, Outcome) of one plugin invocation, timed around the exec."""
        started = time.perf_counter()
        out = invoke(self.executable, command, self.conf, container_id=cid, netns=netns_batch.path(pod_ns),
                     ifname="eth0", cni_path=self.cni_path, node=self.node, args=cni_args(pod_ns, cid),
                     timeout=CALL_TIMEOUT)
        return (time.perf_counter() - started) * 1000.0, out

    def warm_up(self, pod_ns: str) -> None:
        """One unmeasured ADD+DEL (creates the bridge, fills caches, warms the agent)."""
        for command in ("ADD", "DEL"):
            _, out = self.call(command, pod_ns, f"warmup-{self.kind}")
            if out.code != 0:
                raise RuntimeError(f"{self.label} warm-up {command} failed: {out}")

    def close(self) -> None:
        self.stop_agent()
        self.ctx.release([self.node.name])


def make_contenders(ctx, tag: str, first_index: int = 0, kinds=KINDS, family: int = 4) -> list:
    made = []
    try:
        for index, kind in enumerate(kinds):
            made.append(Contender(ctx, kind, first_index + index, tag, family))
    except BaseException:
        for contender in made:
            contender.close()
        raise
    return made


def make_family_contenders(ctx, tag: str, families, first_index: int = 0, kinds=KINDS) -> list:
    """make_contenders for each family (bench/family.py; the IPv6-only network without
    plugins 1.1: kinds_of), IPv4's first: one list, every contender on a node and range
    of its own."""
    made = []
    try:
        for family in families:
            made += make_contenders(ctx, tag, first_index + len(made), kinds_of(kinds, family), family)
    except BaseException:
        for contender in made:
            contender.close()
        raise
    return made
