"""Multus (the thin plugin, without a Kubernetes API server) in front of weft.

conf/multus/00-multus.conflist is the runtime's network: Multus with two weft networks as
its `delegates`, `weft` (the pod's eth0, default route) and `weft2` (net1).  Without a
kubeconfig Multus runs exactly that list: the first delegate gets CNI_IFNAME and its
result is what Multus returns, the next gets net1; DEL runs them in reverse from the
copy it cached in `cniDir`; CHECK runs each; GC and STATUS reach the first only.

    conflist = node_conflist(node, bin_dir, version="1.1.0")
    pod = MultusPod.add(node, conflist, cni_path, name="web-0")   # Multus ADD in the node
    pod.call("CHECK"); pod.call("DEL")

node_conflist() points the shipped file at one lab node (lab/cluster.py's Node): its
subnet files, agent socket and data directories.
"""

import copy
import json
import os

from .cni import invoke
from .cnitool import inet, links
from .namespaces import Namespace, suffix
from .runtimes import REPO, multus

MULTUS_CONFLIST = os.path.join(REPO, "conf", "multus", "00-multus.conflist")
POD_NAMESPACE = "default"


def shipped_conflist() -> dict:
    with open(MULTUS_CONFLIST) as handle:
        return json.load(handle)


def node_conflist(node, bin_dir: str, version: str = None) -> dict:
    """The shipped Multus conflist with `node`'s paths; version: the cniVersion of the
    conflist and of every delegate (default: as shipped)."""
    conflist = copy.deepcopy(shipped_conflist())
    entry = conflist["plugins"][0]
    entry.update(binDir=bin_dir, cniDir=os.path.join(node.dir, "multus"),
                 logFile=os.path.join(node.dir, "multus.log"))
    for delegate in [conflist, *entry["delegates"]]:
        delegate["cniVersion"] = version or delegate["cniVersion"]
    for delegate in entry["delegates"]:
        weft = delegate["plugins"][0]
        weft.update(subnetFile=node.subnet_file(delegate["name"]), agentSocket=os.path.join(node.run_dir, "weftd.sock"),
                    dataDir=os.path.join(node.dir, "weft"), logFile=os.path.join(node.dir, "weft.log"))
        weft["ipam"]["dataDir"] = node.ipam_dir
    return conflist


def netconf(conflist: dict) -> dict:
    """What a runtime (libcni) hands Multus on stdin: its conflist entry with the list's
    cniVersion and name."""
    return {**conflist["plugins"][0], "cniVersion": conflist["cniVersion"], "name": conflist["name"]}


def delegate_calls(node) -> list:
    """[(command, pod name, network, ifname)] of the delegate calls Multus logged on this
    node (logLevel verbose: one line per ADD, CHECK and DEL of a delegate)."""
    calls = []
    try:
        with open(os.path.join(node.dir, "multus.log"), errors="replace") as log:
            for line in log:
                words = line.split()
                if len(words) >= 4 and words[1] == "[verbose]" and words[2] in ("Add:", "Check:", "Del:"):
                    fields = words[3].split(":")  # namespace:name[:uid]:delegate(network):ifname
                    calls.append((words[2][:-1].upper(), fields[1], fields[-2].split("(")[0], fields[-1]))
    except FileNotFoundError:
        pass
    return calls


class MultusPod:
    """A pod namespace attached by Multus inside its node's namespace, as a runtime does."""

    def __init__(self, node, conflist, cni_path, ns, name):
        self.node, self.conflist, self.cni_path, self.ns, self.name = node, conflist, cni_path, ns, name
        self.cid = f"{node.name}-{ns.name}-{suffix()}"
        self.result = None

    @classmethod
    def add(cls, node, conflist: dict, cni_path: str, name: str = None):
        ns = Namespace(f"wm{node.index}")
        pod = cls(node, conflist, cni_path, ns, name or ns.name)
        try:
            out = pod.call("ADD")
            if out.code != 0:
                raise RuntimeError(f"Multus ADD on {node.name} failed: {out}")
        except BaseException:
            ns.delete()
            raise
        pod.result = out.json
        return pod

    def call(self, command: str, **extra):
        """Multus with this pod's CNI environment; CHECK gets the ADD result as prevResult
        (libcni's cached one), extra keys go into the netconf (e.g. GC's attachments)."""
        conf = netconf(self.conflist)
        if command == "CHECK":
            conf["prevResult"] = self.result
        conf.update(extra)
        return invoke(multus(), command, conf, container_id=self.cid, netns=self.ns.path, ifname="eth0",
                      cni_path=self.cni_path, node=self.node.ns,
                      args=f"K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={self.name};K8S_POD_UID=uid-{self.name}")

    def addresses(self, ifname: str) -> list:
        """IPv4 addresses (with prefix) of one of the pod's interfaces, from the kernel."""
        return inet(links(self.ns).get(ifname, {}))

    def ip(self, ifname: str) -> str:
        (address,) = self.addresses(ifname)
        return address.split("/")[0]

    def ping(self, address: str) -> bool:
        return self.ns.run(["ping", "-c", "1", "-W", "2", address], check=False, timeout=15).returncode == 0
