"""weft driven through libcni by weft's own cnitool (tools/cnitool, `make cnitool`).

No pytest in here (tests/e2e/test_cnitool.py and tests/deploy/test_multus.py wrap it
in fixtures).  libcni is what runtimes and Multus call plugins with.  The driver runs
inside a node namespace the test made (`ip netns exec`), so the bridge and host-side
veths land there; the pod is another namespace.  Every path weft and libcni write to
(netconf dir, weft's dataDir/logFile/agentSocket, weft-ipam's dataDir, libcni's result
cache) is under the test's own directory.
"""

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CNITOOL = os.path.join(REPO, "build", "cnitool")


def build() -> str:
    """`make cnitool`; a machine without Go gets the install hint, not a skip."""
    proc = subprocess.run(["make", "-s", "-C", REPO, "cnitool"], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"make cnitool failed (install its tools with `make deps`): {proc.stderr}")
    return CNITOOL


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout)

    @property
    def cni_code(self):
        """The CNI error code the driver reports ("code: N"), None when there was none."""
        for line in self.stderr.splitlines():
            if line.startswith("code: "):
                return int(line.split()[1])
        return None

    def __str__(self):
        return f"exit {self.code}: {self.stdout.strip()} {self.stderr.strip()}"


def weft_conflist(work, name: str, subnet: str, bridge: str, version: str = "1.0.0") -> dict:
    """A standalone weft network (explicit ranges, no agent listening) whose state is
    all under `work`, accepting the ips and mac capabilities."""
    return {
        "cniVersion": version,
        "name": name,
        "plugins": [{
            "type": "weft",
            "bridge": bridge,
            "dataDir": f"{work}/weft",
            "logFile": f"{work}/weft.log",
            "agentSocket": f"{work}/no-agent.sock",
            "capabilities": {"ips": True, "mac": True},
            "ipam": {"type": "weft-ipam", "dataDir": f"{work}/ipam", "ranges": [[{"subnet": subnet}]]},
        }],
    }


class Driver:
    """cnitool as an operator runs it, inside `node`, with its netconf dir under `work`."""

    def __init__(self, exe: str, node, work, cni_path: str):
        self.exe, self.node, self.work, self.cni_path = exe, node, str(work), cni_path
        self.netconf_dir = os.path.join(self.work, "net.d")
        self.cache_dir = os.path.join(self.work, "cni-cache")
        os.makedirs(self.netconf_dir, exist_ok=True)

    def write(self, conflist, filename=None) -> str:
        """Put a conflist (dict, or raw text for a broken one) in NETCONFPATH."""
        name = filename or f"{conflist['name']}.conflist"
        path = os.path.join(self.netconf_dir, name)
        with open(path, "w") as handle:
            handle.write(conflist if isinstance(conflist, str) else json.dumps(conflist, indent=1))
        return path

    def __call__(self, command: str, network: str, pod, *, ifname=None, cni_args=None, cap_args=None,
                 netconf_dir=None, container_id=None, path=None) -> Run:
        env = {"PATH": path or os.environ["PATH"], "NETCONFPATH": netconf_dir or self.netconf_dir,
               "CNI_PATH": self.cni_path, "CNI_CACHE_DIR": self.cache_dir}
        if container_id:
            env["CNI_CONTAINERID"] = container_id
        if ifname:
            env["CNI_IFNAME"] = ifname
        if cni_args:
            env["CNI_ARGS"] = cni_args
        if cap_args is not None:
            env["CAP_ARGS"] = json.dumps(cap_args)
        proc = subprocess.run(["ip", "netns", "exec", self.node.name, self.exe, command, network, pod.path],
                              capture_output=True, text=True, env=env, timeout=120)
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def cached_results(self) -> list:
        directory = os.path.join(self.cache_dir, "results")
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def ipam_state(work, network: str):
    """(reserved addresses, attachment index entries) in weft-ipam's store."""
    directory = os.path.join(str(work), "ipam", network)
    if not os.path.isdir(directory):
        return [], []
    addresses = []
    for name in os.listdir(directory):
        try:
            addresses.append(str(ipaddress.ip_address(name)))
        except ValueError:
            pass
    index = os.path.join(directory, "by-attachment")
    return sorted(addresses), sorted(os.listdir(index)) if os.path.isdir(index) else []


def links(ns) -> dict:
    return {link["ifname"]: link for link in ns.ip_json("addr", "show")}


def veths(node) -> list:
    return sorted(link["ifname"] for link in node.ip_json("link", "show", "type", "veth"))


def inet(link: dict) -> list:
    return [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a["family"] == "inet"]

