"""Calling CNI plugins the way a runtime does: env + stdin, inside a node namespace."""

import json
import os
import shutil
import subprocess
from dataclasses import dataclass


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout) if self.stdout.strip() else None

    def __str__(self):
        return f"exit {self.code}: {self.stdout.strip()} {self.stderr.strip()}"


def invoke(executable: str, command: str, conf: dict, *, container_id="", netns="", ifname="",
           cni_path: str = "", args: str = "", node=None, extra_env=None, timeout=60) -> Outcome:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update({"CNI_COMMAND": command, "CNI_PATH": cni_path or os.path.dirname(executable)})
    for key, value in (("CNI_CONTAINERID", container_id), ("CNI_NETNS", netns),
                       ("CNI_IFNAME", ifname), ("CNI_ARGS", args)):
        if value:
            env[key] = value
    env.update(extra_env or {})
    argv = [executable] if node is None else ["ip", "netns", "exec", node.name, executable]
    stdin = conf if isinstance(conf, (bytes, str)) else json.dumps(conf)
    proc = subprocess.run(argv, input=stdin if isinstance(stdin, bytes) else stdin.encode(),
                          capture_output=True, env=env, timeout=timeout)
    return Outcome(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def run_chain(plugins: list, command: str, conflist: dict, cni_path: str, *, container_id: str = "",
              netns: str = "", ifname: str = "", node=None, args: str = "", prev_result=None, extra_env=None,
              valid_attachments=None):
    """Run a conflist as libcni does: ADD in order threading prevResult, DEL in
    reverse, CHECK in order with the final result; GC and STATUS (cniVersion 1.1.0) in
    order with no attachment (no container ID, netns or ifname; GC gets
    `valid_attachments` as cni.dev/valid-attachments).  Returns (Outcome, result)."""
    if command in ("GC", "STATUS"):
        container_id = netns = ifname = ""
    base = {"cniVersion": conflist["cniVersion"], "name": conflist["name"]}
    entries = conflist["plugins"]
    order = list(reversed(entries)) if command == "DEL" else entries
    result = prev_result
    last = None
    for entry in order:
        conf = {**entry, **base}
        if command == "GC":
            conf["cni.dev/valid-attachments"] = valid_attachments or []
        if result is not None and command not in ("GC", "STATUS"):
            conf["prevResult"] = result
        executable = _find(entry["type"], cni_path)
        last = invoke(executable, command, conf, container_id=container_id, netns=netns,
                      ifname=ifname, cni_path=cni_path, node=node, args=args, extra_env=extra_env)
        if last.code != 0:
            return last, result
        if command == "ADD":
            result = last.json
    return last, result


def _find(plugin_type: str, cni_path: str) -> str:
    for directory in cni_path.split(":"):
        candidate = os.path.join(directory, plugin_type)
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(f"{plugin_type} not in {cni_path}")


def path_without_ip6tables(directory) -> str:
    """A PATH where ip6tables is absent.  Debian's portmap 1.1.1 CHECKs its IPv4 DNAT
    rules in the IPv6 table whenever ip6tables exists, so CHECK of any pod fails;
    without ip6tables it manages IPv4 only, as it should for an IPv4 pod."""
    tools = os.path.join(str(directory), "path")
    os.makedirs(tools, exist_ok=True)
    for name in ("iptables", "iptables-save", "iptables-restore", "nft", "tc"):
        target = shutil.which(name)
        if target and not os.path.lexists(os.path.join(tools, name)):
            os.symlink(target, os.path.join(tools, name))
    return f"{tools}:/usr/bin:/bin"
