"""A weft cluster node driven through containerd's CRI, as kubelet drives it.

    cluster.set_network("weft", {...})
    node = CriNode(cluster, extra_handlers={"broken": {...conflist...}, "missing": None},
                   which=release("2.1"))      # default: Debian 12's containerd 1.6
    node.start_agent()    # weftd in the node's netns, mount and PID namespaces of its own
    node.start()          # ready, conflists, containerd
    sandbox = node.run_sandbox("web")        # RunPodSandbox on the default (weft) handler
    node.cleanup()        # sandboxes and containerd; the cluster stops the agent

Handlers: "" (default, `runc`) uses the weft conflist, conf/10-weft.conflist with this
node's paths (subnet file, agent socket, data dirs); "ref" the reference chain
(bridge + host-local + portmap) on its own bridge and /24; more from extra_handlers
(a conflist dict, None for an empty conf dir, or a callable(CriNode) -> conflist
called once the node has its lease).  The weft and reference conflists say the
cniVersion the release's libcni reads (1.0.0 for 1.6, 1.1.0 for 2.1), and the CNI bin
dir holds weft's launchers beside that release's reference plugins (Debian 12's 1.1.1
for 1.6, 1.9.1 for 2.1).
"""

import copy
import json
import os

from .cluster import REPO
from .containerd import Containerd, cni_bin_dir, release

WEFT_CONFLIST = os.path.join(REPO, "conf", "10-weft.conflist")
REF_BRIDGE = "cni-ref"


def weft_conflist(node, network: str = "weft", cni_version: str = None) -> dict:
    """The shipped default conflist, pointed at this node's agent and directories
    (cni_version: instead of the shipped cniVersion)."""
    with open(WEFT_CONFLIST) as handle:
        conflist = json.load(handle)
    if cni_version:
        conflist["cniVersion"] = cni_version
    weft = conflist["plugins"][0]
    weft.update(subnetFile=node.subnet_file(network), agentSocket=os.path.join(node.run_dir, "weftd.sock"),
                dataDir=os.path.join(node.dir, "weft"), logFile=os.path.join(node.dir, "weft.log"))
    weft["ipam"]["dataDir"] = node.ipam_dir
    return conflist


def reference_conflist(node, cni_version: str = "1.0.0") -> dict:
    """bridge + host-local + portmap (the runtime's reference plugins), the same
    semantics as weft's default (gateway on the bridge, default route, hairpin)."""
    return {"cniVersion": cni_version, "name": "ref", "plugins": [
        {"type": "bridge", "bridge": REF_BRIDGE, "isGateway": True, "isDefaultGateway": True,
         "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": f"10.99.{node.index}.0/24"}]],
                  "dataDir": os.path.join(node.dir, "host-local")}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}


class CriNode:
    def __init__(self, cluster, extra_handlers=None, which=None):
        self.cluster = cluster
        self.release = which or release()
        self.node = cluster.add_node()
        self.conflists = {"": self.weft_conflist(),
                          "ref": reference_conflist(self.node, self.release.cni_version)}
        self.conflists.update(extra_handlers or {})
        self.conf_dirs = {handler: os.path.join(self.node.dir, f"net.d-{handler or 'weft'}")
                          for handler in self.conflists}
        bin_dir = cni_bin_dir(os.path.join(self.node.dir, "cni-bin"), os.path.join(cluster.installed, "cni"),
                              self.release.plugins_dir)
        self.runtime = Containerd(self.node.ns.name, os.path.join(self.node.dir, "containerd"), bin_dir,
                                  self.conf_dirs, self.release)

    def weft_conflist(self, **overrides) -> dict:
        """The shipped conflist with this node's paths at the release's cniVersion;
        overrides: keys of the weft plugin replaced."""
        conflist = weft_conflist(self.node, cni_version=self.release.cni_version)
        conflist["plugins"][0].update(overrides)
        return conflist

    @property
    def client(self):
        return self.runtime.client()

    def start_agent(self, **options):
        """weftd in the node's network namespace but a mount and PID namespace of its own,
        as in the DaemonSet: it sees none of containerd's pod netns paths, and gets each
        pod's namespace from the `weft` that containerd runs (by descriptor)."""
        self.runtime.open()
        return self.node.start_agent(own_view=True, **options)

    def start(self):
        """After start_agent (of every node: leases first): wait for the lease, write the
        conflists, start containerd."""
        self.node.wait_ready()
        for handler, conflist in self.conflists.items():
            self.write_conflist(handler, conflist(self) if callable(conflist) else conflist)
        self.runtime.start()
        return self

    def write_conflist(self, handler: str, conflist):
        os.makedirs(self.conf_dirs[handler], exist_ok=True)
        if conflist is not None:
            path = os.path.join(self.conf_dirs[handler], f"10-{conflist.get('name', 'x')}.conflist")
            with open(path, "w") as handle:
                json.dump(conflist, handle, indent=1)

    def subnet(self) -> str:
        return self.node.status()["lease"]["subnet"]

    def run_sandbox(self, name: str, handler: str = "", **kwargs) -> str:
        return self.client.run_pod_sandbox(self.runtime.sandbox_config(name, **kwargs), handler)

    def remove_sandbox(self, sandbox_id: str):
        self.client.stop_pod_sandbox(sandbox_id)
        self.client.remove_pod_sandbox(sandbox_id)

    def cleanup(self):
        self.runtime.cleanup()


def copy_conflist(conflist: dict, name: str, **weft_overrides) -> dict:
    """A copy of a weft conflist under another network name with keys of its first plugin replaced."""
    made = copy.deepcopy(conflist)
    made["name"] = name
    made["plugins"][0].update(weft_overrides)
    return made
