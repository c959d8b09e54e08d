"""The deployment artifacts of conf/ as data, for the tests in this directory."""

import glob
import json
import os

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONF = os.path.join(REPO, "conf")
KUBE = os.path.join(CONF, "kubernetes")
CONFLISTS = sorted(glob.glob(os.path.join(CONF, "*.conflist")))
NAD = os.path.join(KUBE, "multus-secondary-nad.yaml")
MULTUS_CONFLIST = os.path.join(CONF, "multus", "00-multus.conflist")


def kube_files() -> list:
    return sorted(glob.glob(os.path.join(KUBE, "*.yaml")))


def resources(path) -> list:
    with open(path) as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def resource(kind: str) -> dict:
    found = [doc for path in kube_files() for doc in resources(path) if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in conf/kubernetes, found {len(found)}"
    return found[0]


def configmap_data() -> dict:
    return resource("ConfigMap")["data"]


def nad_config() -> dict:
    return json.loads(resource("NetworkAttachmentDefinition")["spec"]["config"])


def load_json(path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def all_netconfs() -> list:
    """(label, conflist-shaped dict) for every network configuration weft ships:
    conf/*.conflist, the ConfigMap's conflist, the NAD's spec.config and the delegates of
    the Multus conflist."""
    out = [(os.path.relpath(path, REPO), load_json(path)) for path in CONFLISTS]
    for delegate in load_json(MULTUS_CONFLIST)["plugins"][0]["delegates"]:
        out.append((f"{os.path.relpath(MULTUS_CONFLIST, REPO)} delegate {delegate['name']}", delegate))
    for key, value in configmap_data().items():
        if key.endswith(".conflist"):
            out.append((f"ConfigMap weft-config {key}", json.loads(value)))
    single = nad_config()
    entry = {k: v for k, v in single.items() if k not in ("cniVersion", "name")}
    out.append(("NetworkAttachmentDefinition weft2 spec.config",
                {"cniVersion": single["cniVersion"], "name": single["name"], "plugins": [entry]}))
    return out


def daemonset_container(name: str, init: bool = False) -> dict:
    spec = resource("DaemonSet")["spec"]["template"]["spec"]
    for container in spec["initContainers" if init else "containers"]:
        if container["name"] == name:
            return container
    raise AssertionError(f"no {'init ' if init else ''}container {name} in the DaemonSet")
