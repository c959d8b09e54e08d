"""Which container runtime the installer's node runs, for `weftctl install-conflist`.

Stated by hand (--runtime / $WEFT_CONTAINER_RUNTIME, e.g. containerd://2.1.9: a node
without Kubernetes), or read from the node's Node object: kubelet fills its
status.nodeInfo.containerRuntimeVersion from the runtime's own CRI Version answer.  The
read uses the pod's ServiceAccount (kube_api.py; RBAC: get on nodes), for the node named
by --node-name or $NODE_NAME (the DaemonSet sets it from spec.nodeName).  It is one GET,
bounded in time (READ_SECONDS) and size (READ_LIMIT); the answer is untrusted: it must be
a JSON object for that node with a containerRuntimeVersion string, which
chain_version.judge_runtime then parses strictly.  Any failure gives a verdict that the
runtime could not be confirmed, with the reason.
"""

import os
import re
import urllib.parse

from ..cni import chain_version
from ..cni.chain_version import RuntimeVerdict
from ..kube_api import SERVICEACCOUNT_DIR, ApiServer, KubeApiError

RUNTIME_ENV = "WEFT_CONTAINER_RUNTIME"
NODE_NAME_ENV = "NODE_NAME"
READ_SECONDS = 5.0             # to connect, then for the whole answer
READ_LIMIT = 2 * 1024 * 1024   # bytes; a Node with kubelet's 50 listed images is tens of KiB
RBAC_HINT = "the install-cni container's ServiceAccount needs get on nodes, see conf/kubernetes/04-rbac.yaml"
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")  # RFC 1123 subdomain
_NAME_MOST = 253
_REPORTED_MOST = 128  # characters of containerRuntimeVersion taken as they are


def stated(flag_value):
    """(the runtime stated by hand, what stated it) or ("", ""); ValueError when it does not
    parse (an operator's typo fails the install rather than quietly capping the version)."""
    value, source = (flag_value, "--runtime") if flag_value is not None else \
        (os.environ.get(RUNTIME_ENV, ""), RUNTIME_ENV)
    if not value:
        return "", ""
    try:
        chain_version.parse_runtime(value)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    return value, source


def _node_name(flag_value) -> tuple:
    """(name, problem)."""
    name = flag_value if flag_value is not None else os.environ.get(NODE_NAME_ENV, "")
    if not name:
        return "", f"no node name to look up (${NODE_NAME_ENV}, or --node-name)"
    if len(name) > _NAME_MOST or not _NAME.fullmatch(name):
        return "", f"node name {chain_version.shown(name)} is not a Kubernetes node name"
    return name, ""


def _reported(node: dict, name: str) -> tuple:
    """(containerRuntimeVersion, problem) from the Node object the API answered with."""
    if not isinstance(node, dict):
        return "", "the API's answer is not a JSON object"
    if node.get("kind", "Node") != "Node":
        return "", f"the API answered with a {chain_version.shown(node.get('kind'))}, not a Node"
    meta = node.get("metadata")
    if not isinstance(meta, dict) or meta.get("name") != name:
        return "", f"the API's answer is not node {name}'s object"
    status = node.get("status")
    info = status.get("nodeInfo") if isinstance(status, dict) else None
    reported = info.get("containerRuntimeVersion") if isinstance(info, dict) else None
    if not isinstance(reported, str) or not reported:
        return "", f"node {name} has no status.nodeInfo.containerRuntimeVersion (kubelet has not reported it yet?)"
    if len(reported) > _REPORTED_MOST:
        return "", f"node {name}'s containerRuntimeVersion is longer than {_REPORTED_MOST} characters"
    return reported, ""


def learn(runtime_flag=None, node_flag=None, server=None, serviceaccount_dir=None) -> RuntimeVerdict:
    """The runtime's verdict: the one stated (already checked by stated()), else the Node's."""
    value, source = stated(runtime_flag)
    if value:
        return chain_version.judge_runtime(value, f"stated by {source}")
    name, problem = _node_name(node_flag)
    if problem:
        return chain_version.unconfirmed(problem)
    path = f"/api/v1/nodes/{urllib.parse.quote(name, safe='')}"
    try:
        api = ApiServer(server, serviceaccount_dir or SERVICEACCOUNT_DIR, READ_SECONDS,
                        rbac_hint=RBAC_HINT)
        node = api.get_json(path, limit=READ_LIMIT, within=READ_SECONDS)
    except KubeApiError as exc:
        return chain_version.unconfirmed(f"reading node {name}: {exc}")
    reported, problem = _reported(node, name)
    if problem:
        return chain_version.unconfirmed(problem)
    return chain_version.judge_runtime(reported, f"node {name}'s containerRuntimeVersion")
