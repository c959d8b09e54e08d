"""The hand-built reference datapath: what weft builds, made with plain `ip` commands.

An underlay namespace with a bridge; node namespaces on it (veth eth0, 192.168.100.N);
in each node a VXLAN device as flannel/weft build it (VNI 1, local = node address,
dstport 8472, nolearning, MTU 1450, address <subnet>.0/32, fixed MAC), a bridge cbr0
with the gateway <subnet>.1/24, IPv4 forwarding on, and static per-peer state: a
permanent neighbour (peer .0 -> peer VTEP MAC), an FDB entry (MAC -> peer address)
and a route (peer subnet via peer .0 dev vxlan onlink).  Pods are namespaces with a
veth (MTU 1450) on cbr0, an address from the node's subnet and a default route via
the gateway.  No agent, no plugin, nothing else.

With overlay="wireguard" each node instead gets a WireGuard device `wgref` (MTU
1440, address <subnet>.0/32, port 51820, keys from `wg genkey`) and, per peer, a
peer (endpoint peer:51820, allowed-ips peer subnet) set with `wg` plus the route
`peer subnet dev wgref`: the kernel's device when the module exists, else
wireguard-go, started in a private mount namespace (its socket directory bound over
/run, as weft does) so the nodes' sockets never collide; `wg` runs inside it.

With family=6 everything is IPv6 (the IPv6-underlay figure, bench/ipv6_underlay.py):
node N is fd00:100::N/64 on the underlay, its pods fd10:244:0:N::/64 (gateway ::1 on
cbr0), the VXLAN device (local = the node's IPv6 address) MTU 1430, the WireGuard one
1420 with endpoints [peer]:51820; addresses without DAD, IPv6 forwarding on.
"""

import os
import shutil
import signal
import subprocess
import time

from lab.namespaces import sh

UNDERLAY = "192.168.100"
UNDERLAY6 = "fd00:100::"
MTU = 1450
MTU6 = 1430  # VXLAN over IPv6: 20 more bytes of outer header
VNI = 1
PORT = 8472
DEVICE = f"weft.{VNI}"


def vtep_mac(index: int) -> str:
    return f"0a:58:0a:f4:{index:02x}:00"


WG_DEVICE, WG_PORT, WG_MTU, WG_MTU6 = "wgref", 51820, 1440, 1420


class ReferenceNode:
    def __init__(self, topology, index: int):
        self.topology = topology
        self.index = index
        six = topology.family == 6
        self.mtu = (WG_MTU6 if six else WG_MTU) if topology.overlay == "wireguard" else (MTU6 if six else MTU)
        self.wg_pid = None
        self.ns = topology.ctx.namespace(f"wbrn{index}")
        self.ip = f"{UNDERLAY6}{index:x}" if six else f"{UNDERLAY}.{index}"
        self.subnet = f"fd10:244:0:{index:x}:" if six else f"10.244.{index}"  # + ".N" / ":N"
        self.sep, self.plen, self.hostlen = (":", 64, 128) if six else (".", 24, 32)
        self.nodad = " nodad" if six else ""
        self.pods = 0
        self.pod_names = []
        ul = topology.underlay.name
        port = f"rul{index}-{self.ns.name[-6:]}"
        sh(["ip", "-n", ul, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", self.ns.name])
        sh(["ip", "-n", ul, "link", "set", port, "master", "ul0", "up"])
        self._ip(f"addr add {self.ip}/{self.plen} dev eth0{self.nodad}", "link set eth0 up",
                 "link add cbr0 type bridge", f"link set cbr0 mtu {self.mtu}",
                 f"addr add {self.host(1)}/{self.plen} dev cbr0{self.nodad}", "link set cbr0 up")
        if topology.overlay == "wireguard":
            self._wireguard()
        else:
            self._ip(f"link add {DEVICE} type vxlan id {VNI} local {self.ip} dstport {PORT} nolearning dev eth0",
                     f"link set {DEVICE} mtu {self.mtu} address {vtep_mac(index)}",
                     f"addr add {self.host(0)}/{self.hostlen} dev {DEVICE}{self.nodad}", f"link set {DEVICE} up")
        self.ns.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1" if six else "net.ipv4.ip_forward=1"])

    def host(self, n: int) -> str:
        """Address n of this node's pod subnet (0: the subnet's own, .0 or ::)."""
        return f"{self.subnet}{self.sep}{n}" if n or self.sep == "." else f"{self.subnet}:"

    @property
    def cidr(self) -> str:
        return f"{self.host(0)}/{self.plen}"

    @property
    def endpoint(self) -> str:
        return f"[{self.ip}]:{WG_PORT}" if ":" in self.ip else f"{self.ip}:{WG_PORT}"

    # -- wireguard ---------------------------------------------------------------
    def _wireguard(self):
        work = os.path.join(self.topology.ctx.work, f"wgref-{self.ns.name}")
        os.makedirs(work, exist_ok=True)
        self.key_file = os.path.join(work, "private")
        private = sh(["wg", "genkey"]).stdout.strip()
        with open(os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write(private + "\n")
        self.public_key = sh(["wg", "pubkey"], input=private + "\n").stdout.strip()
        kernel = self.ns.run(["ip", "link", "add", WG_DEVICE, "type", "wireguard"], check=False).returncode == 0
        self.topology.implementation = "kernel" if kernel else "userspace"
        if not kernel:
            log = open(os.path.join(work, "wireguard-go.log"), "ab")
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns.name, "unshare", "--mount", "--propagation",
                                     "private", "sh", "-c", 'mount --bind "$1" /run && exec wireguard-go -f "$2"',
                                     "sh", work, WG_DEVICE], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()
            self.wg_proc = proc
            self.wg_pid = proc.pid
            deadline = time.monotonic() + 10
            while not os.path.exists(os.path.join(work, "wireguard", f"{WG_DEVICE}.sock")):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"reference wireguard-go in {self.ns.name} did not start")
                time.sleep(0.05)
        self.wg("set", WG_DEVICE, "private-key", self.key_file, "listen-port", str(WG_PORT))
        self._ip(f"link set {WG_DEVICE} mtu {self.mtu}",
                 f"addr add {self.host(0)}/{self.hostlen} dev {WG_DEVICE}{self.nodad}", f"link set {WG_DEVICE} up")

    def wg(self, *args):
        """`wg` in this node (inside wireguard-go's mount namespace when it runs)."""
        enter = ["nsenter", "-t", str(self.wg_pid), "-m", "-n"] if self.wg_pid else \
            ["ip", "netns", "exec", self.ns.name]
        return sh([*enter, "wg", *args])

    def stop(self):
        if self.wg_pid:
            try:
                os.kill(self.wg_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.wg_proc.wait(timeout=10)
            self.wg_pid = None

    def _ip(self, *commands: str):
        sh(["ip", "-n", self.ns.name, "-batch", "-"], input="\n".join(commands) + "\n")

    def peer_with(self, other):
        if self.topology.overlay == "wireguard":
            self.wg("set", WG_DEVICE, "peer", other.public_key, "endpoint", other.endpoint,
                    "allowed-ips", other.cidr)
            self._ip(f"route add {other.cidr} dev {WG_DEVICE}")
            return
        self._ip(f"neigh add {other.host(0)} lladdr {vtep_mac(other.index)} dev {DEVICE} nud permanent")
        sh(["bridge", "-n", self.ns.name, "fdb", "append", vtep_mac(other.index), "dev", DEVICE,
            "dst", other.ip])
        self._ip(f"route add {other.cidr} via {other.host(0)} dev {DEVICE} onlink")

    def add_pod(self, ctx):
        """A pod namespace on cbr0; returns (namespace, address)."""
        self.pods += 1
        pod = ctx.namespace(f"wbrp{self.index}")
        self.pod_names.append(pod.name)
        address = self.host(self.pods + 1)
        host = f"rv{self.index}{self.pods}-{pod.name[-6:]}"
        self._ip(f"link add {host} mtu {self.mtu} type veth peer name eth0 netns {pod.name}",
                 f"link set {host} master cbr0 up")
        sh(["ip", "-n", pod.name, "-batch", "-"],
           input=f"link set eth0 mtu {self.mtu}\naddr add {address}/{self.plen} dev eth0{self.nodad}\n"
                 f"link set eth0 up\nroute add default via {self.host(1)}\n")
        return pod, address


class ReferenceTopology:
    """Two (or more) reference nodes on one underlay bridge, fully meshed.
    overlay: "vxlan" or "wireguard"; implementation: "kernel"/"userspace" (wireguard);
    family: 4, or 6 for an IPv6 underlay and IPv6 pods."""

    def __init__(self, ctx, nodes: int = 2, overlay: str = "vxlan", family: int = 4):
        if overlay == "wireguard":
            for tool, package in (("wg", "wireguard-tools"), ("wireguard-go", "wireguard-go")):
                if shutil.which(tool) is None:
                    raise RuntimeError(f"{tool} is missing: apt-get install --no-install-recommends {package}")
        self.ctx = ctx
        self.overlay = overlay
        self.family = family
        self.implementation = None
        self.underlay = ctx.namespace("wbru")
        self.underlay.run(["ip", "link", "add", "ul0", "type", "bridge"])
        self.underlay.run(["ip", "link", "set", "ul0", "up"])
        self.nodes = []
        try:
            for i in range(nodes):
                self.nodes.append(ReferenceNode(self, i + 1))
        except BaseException:
            self.stop()
            raise
        for node in self.nodes:
            for other in self.nodes:
                if other is not node:
                    node.peer_with(other)

    def namespace_names(self) -> list:
        names = [self.underlay.name]
        for node in self.nodes:
            names += [node.ns.name] + node.pod_names
        return names

    def stop(self):
        """Stop the reference's processes (wireguard-go) by PID."""
        for node in self.nodes:
            node.stop()
