"""The hand-built reference datapath: what weft builds, made with plain `ip` commands.

An underlay namespace with a bridge; node namespaces on it (veth eth0, 192.168.100.N);
in each node a VXLAN device as flannel/weft build it (VNI 1, local = node address,
dstport 8472, nolearning, MTU 1450, address <subnet>.0/32, fixed MAC), a bridge cbr0
with the gateway <subnet>.1/24, IPv4 forwarding on, and static per-peer state: a
permanent neighbour (peer .0 -> peer VTEP MAC), an FDB entry (MAC -> peer address)
and a route (peer subnet via peer .0 dev vxlan onlink).  Pods are namespaces with a
veth (MTU 1450) on cbr0, an address from the node's subnet and a default route via
the gateway.  No agent, no plugin, nothing else.
"""

from lab.namespaces import sh

UNDERLAY = "192.168.100"
MTU = 1450
VNI = 1
PORT = 8472
DEVICE = f"weft.{VNI}"


def vtep_mac(index: int) -> str:
    return f"0a:58:0a:f4:{index:02x}:00"


class ReferenceNode:
    def __init__(self, topology, index: int):
        self.index = index
        self.ns = topology.ctx.namespace(f"wbrn{index}")
        self.ip = f"{UNDERLAY}.{index}"
        self.subnet = f"10.244.{index}"
        self.pods = 0
        self.pod_names = []
        ul = topology.underlay.name
        port = f"rul{index}-{self.ns.name[-6:]}"
        sh(["ip", "-n", ul, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", self.ns.name])
        sh(["ip", "-n", ul, "link", "set", port, "master", "ul0", "up"])
        self._ip(f"addr add {self.ip}/24 dev eth0", "link set eth0 up",
                 f"link add {DEVICE} type vxlan id {VNI} local {self.ip} dstport {PORT} nolearning dev eth0",
                 f"link set {DEVICE} mtu {MTU} address {vtep_mac(index)}",
                 f"addr add {self.subnet}.0/32 dev {DEVICE}", f"link set {DEVICE} up",
                 "link add cbr0 type bridge", f"link set cbr0 mtu {MTU}",
                 f"addr add {self.subnet}.1/24 dev cbr0", "link set cbr0 up")
        self.ns.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def _ip(self, *commands: str):
        sh(["ip", "-n", self.ns.name, "-batch", "-"], input="\n".join(commands) + "\n")

    def peer_with(self, other):
        self._ip(f"neigh add {other.subnet}.0 lladdr {vtep_mac(other.index)} dev {DEVICE} nud permanent")
        sh(["bridge", "-n", self.ns.name, "fdb", "append", vtep_mac(other.index), "dev", DEVICE,
            "dst", other.ip])
        self._ip(f"route add {other.subnet}.0/24 via {other.subnet}.0 dev {DEVICE} onlink")

    def add_pod(self, ctx):
        """A pod namespace on cbr0; returns (namespace, address)."""
        self.pods += 1
        pod = ctx.namespace(f"wbrp{self.index}")
        self.pod_names.append(pod.name)
        address = f"{self.subnet}.{self.pods + 1}"
        host = f"rv{self.index}{self.pods}-{pod.name[-6:]}"
        self._ip(f"link add {host} mtu {MTU} type veth peer name eth0 netns {pod.name}",
                 f"link set {host} master cbr0 up")
        sh(["ip", "-n", pod.name, "-batch", "-"],
           input=f"link set eth0 mtu {MTU}\naddr add {address}/24 dev eth0\nlink set eth0 up\n"
                 f"route add default via {self.subnet}.1\n")
        return pod, address


class ReferenceTopology:
    """Two (or more) reference nodes on one underlay bridge, fully meshed."""

    def __init__(self, ctx, nodes: int = 2):
        self.ctx = ctx
        self.underlay = ctx.namespace("wbru")
        self.underlay.run(["ip", "link", "add", "ul0", "type", "bridge"])
        self.underlay.run(["ip", "link", "set", "ul0", "up"])
        self.nodes = [ReferenceNode(self, i + 1) for i in range(nodes)]
        for node in self.nodes:
            for other in self.nodes:
                if other is not node:
                    node.peer_with(other)

    def namespace_names(self) -> list:
        names = [self.underlay.name]
        for node in self.nodes:
            names += [node.ns.name] + node.pod_names
        return names
