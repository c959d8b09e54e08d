"""Kubernetes manifests, kind config, conflists, systemd unit: valid for the tools that
read them, and consistent with weft's own code (flags, keys, paths, capabilities)."""

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cni_plugin.plugin import config as plugin_config
from cni_plugin import etcd_flags
from cni_plugin.agent import options
from cni_plugin.cli import install_conflist, node_runtime
from cni_plugin.cni import chain_version, netconf
from cni_plugin.subnet import subnet_file
from cni_plugin.subnet.lease import NetworkConfig

from . import artifacts
from .artifacts import CONF, KUBE, REPO

KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]  # appArmorProfile is 1.30+
DAEMONSET_CAPS = {"NET_ADMIN", "NET_RAW", "SYS_ADMIN"}
YAML_FILES = sorted([*artifacts.kube_files(), os.path.join(CONF, "kind-config.yaml"),
                     os.path.join(REPO, "tests", "deploy", "docker-compose.yml"),
                     os.path.join(REPO, "tests", "deploy", "yamllint.yaml")])
K8S_MANIFESTS = [p for p in artifacts.kube_files()
                 if os.path.basename(p) not in ("kustomization.yaml", "multus-secondary-nad.yaml")]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("path", K8S_MANIFESTS, ids=os.path.basename)
def test_manifest_validates_offline_against_the_kubernetes_schemas(path, version):
    for doc in artifacts.resources(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_network_attachment_definition_matches_the_multus_crd():
    with open(os.path.join(os.path.dirname(__file__), "schemas", "network-attachment-definition.json")) as f:
        schema = json.load(f)
    (nad,) = artifacts.resources(artifacts.NAD)
    jsonschema.validate(nad, schema)
    # metadata as Kubernetes checks every object's (ObjectMeta, carried by a stand-in kind)
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": nad["metadata"]},
                                 kubernetes_validate.latest_version(), strict=True)
    json.loads(nad["spec"]["config"])


def test_kustomization_lists_the_manifests_in_order():
    with open(os.path.join(KUBE, "kustomization.yaml")) as handle:
        kustomization = yaml.safe_load(handle)
    assert kustomization["resources"] == [os.path.basename(p) for p in K8S_MANIFESTS]
    assert artifacts.resources(K8S_MANIFESTS[0])[0]["kind"] == "Namespace"


def test_yaml_lints_clean():
    proc = subprocess.run([sys.executable, "-m", "yamllint", "-f", "parsable", "-c",
                           os.path.join(REPO, "tests", "deploy", "yamllint.yaml"), *YAML_FILES],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- network configurations ----------------------------------------------------

NETCONFS = artifacts.all_netconfs()


@pytest.mark.parametrize("label,conflist", NETCONFS, ids=[label for label, _ in NETCONFS])
def test_netconf_loads_through_weft_loader(label, conflist, tmp_path):
    weft_entries = [p for p in conflist["plugins"] if p["type"] == "weft"]
    assert weft_entries, label
    for entry in weft_entries:
        conf = {**entry, "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
        netconf.check_version(conf)
        netconf.check_name(conf)
        path = conf.get("subnetFile", f"/run/weft/{conf['name']}.env")
        assert path == f"/run/weft/{conf['name']}.env", "weftd writes /run/weft/<network>.env"
        lease = tmp_path / os.path.basename(path)
        subnet_file.write(str(lease), subnet_file.SubnetLease(
            network=ipaddress.IPv4Network("10.246.0.0/16"),
            subnet=ipaddress.IPv4Interface("10.246.7.1/24"), mtu=1450, ipmasq=True))
        cfg = plugin_config.load({**conf, "subnetFile": str(lease)}, "ADD")
        assert cfg.delegate_conf["ipam"]["ranges"] == [[{"subnet": "10.246.7.0/24", "gateway": "10.246.7.1"}]]
        assert cfg.ipam_type == "weft-ipam"


def test_the_configmap_carries_conf_conflist_and_the_nad_carries_the_secondary():
    data = artifacts.configmap_data()
    assert json.loads(data["10-weft.conflist"]) == artifacts.load_json(os.path.join(CONF, "10-weft.conflist"))
    secondary = artifacts.load_json(os.path.join(CONF, "weft-secondary.conflist"))
    nad = artifacts.nad_config()
    (entry,) = secondary["plugins"]
    assert {k: v for k, v in nad.items() if k not in ("cniVersion", "name", "capabilities")} == entry
    assert (nad["cniVersion"], nad["name"]) == (secondary["cniVersion"], secondary["name"])
    assert nad["isDefaultGateway"] is False and nad["bridge"] != "cbr0"
    assert artifacts.resource("NetworkAttachmentDefinition")["metadata"]["name"] == nad["name"]


def test_primary_conflist_chains_portmap():
    conflist = artifacts.load_json(os.path.join(CONF, "10-weft.conflist"))
    assert [p["type"] for p in conflist["plugins"]] == ["weft", "portmap"]
    assert conflist["plugins"][1]["capabilities"] == {"portMappings": True}


def test_network_configs_are_valid_and_distinct():
    data = artifacts.configmap_data()
    primary = NetworkConfig.parse("weft", data["net-conf.json"])
    secondary = NetworkConfig.parse("weft2", data["net-conf-weft2.json"])
    assert primary.backend.vni != secondary.backend.vni
    assert not primary.network.overlaps(secondary.network)
    with open(os.path.join(CONF, "kind-config.yaml")) as handle:
        kind = yaml.safe_load(handle)
    assert kind["networking"]["disableDefaultCNI"] is True
    assert ipaddress.ip_network(kind["networking"]["podSubnet"]) == primary.network


def test_version_lists_every_shipped_cniversion(installed):
    versions = {conflist["cniVersion"] for _, conflist in NETCONFS}
    for plugin in ("weft", "weft-ipam"):
        for version in versions:
            proc = subprocess.run([f"{installed}/cni/{plugin}"], input=json.dumps({"cniVersion": version}),
                                  env={"CNI_COMMAND": "VERSION", "PATH": os.environ["PATH"]},
                                  capture_output=True, text=True, timeout=30)
            assert proc.returncode == 0, proc.stdout
            assert version in json.loads(proc.stdout)["supportedVersions"]


def test_reference_portmap_accepts_the_conflist_version():
    """libcni checks every plugin of a list with VERSION: portmap must know the list's version
    (Debian 12's containernetworking-plugins 1.1 stops at 1.0.0)."""
    portmap = "/usr/lib/cni/portmap"
    version = artifacts.load_json(os.path.join(CONF, "10-weft.conflist"))["cniVersion"]
    proc = subprocess.run([portmap], input=json.dumps({"cniVersion": version}), capture_output=True,
                          text=True, env={"CNI_COMMAND": "VERSION"}, timeout=30)
    assert version in json.loads(proc.stdout)["supportedVersions"]


# -- the DaemonSet against weftd's code --------------------------------------------

def _expand(arg: str, env: dict) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), "x"), arg)


def test_daemonset_weftd_flags_parse_and_probes_use_the_metrics_port():
    weftd = artifacts.daemonset_container("weftd")
    assert weftd["command"] == ["weftd-container"]
    env = {"NODE_NAME": "node-a", "WEFT_ETCD_ENDPOINTS": artifacts.configmap_data()["etcd-endpoints"]}
    args = options.parse([_expand(a, env) for a in weftd["args"]])
    assert args.node_name == "node-a" and args.networks == ["weft"]
    assert etcd_flags.endpoints(args)[0].startswith("https://")
    mounts = {m["mountPath"]: m for m in weftd["volumeMounts"]}
    for path in (args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile):
        assert os.path.dirname(path) in mounts
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = weftd[probe]["httpGet"]
        assert (get["host"], get["port"], get["path"]) == (args.metrics_host, args.metrics_port, path)
    # the paths weftd and the fast path use are the node's
    for path in (args.run_dir, args.state_dir, args.ipam_data_dir, "/opt/cni/bin",
                 os.path.dirname(plugin_config.DEFAULT_LOG_FILE)):
        assert path in mounts, f"{path} is not mounted into weftd"
    # pod namespaces arrive by descriptor from the forwarder (cni/wire.py): weftd mounts
    # no runtime's netns directory, so none of them propagates into its mount namespace
    assert not [m for m in mounts if "netns" in m], mounts
    assert not [m for m in mounts.values() if m.get("mountPropagation")], mounts
    assert os.path.dirname(plugin_config.DEFAULT_AGENT_SOCKET) == args.run_dir


def test_daemonset_privileges_are_the_listed_capabilities_only():
    spec = artifacts.resource("DaemonSet")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["automountServiceAccountToken"] is True  # policy source
    (role,) = [r for r in artifacts.resources(os.path.join(KUBE, "04-rbac.yaml")) if r["kind"] == "ClusterRole"]
    # read-only: weftd's policy objects, and the one Node the installer reads by name
    rules = {r: rule["verbs"] for rule in role["rules"] for r in rule["resources"]}
    assert rules == {"pods": ["get", "list", "watch"], "namespaces": ["get", "list", "watch"],
                     "networkpolicies": ["get", "list", "watch"], "nodes": ["get"]}
    weftd = artifacts.daemonset_container("weftd")["securityContext"]
    assert weftd["privileged"] is False
    assert set(weftd["capabilities"]["add"]) == DAEMONSET_CAPS and weftd["capabilities"]["drop"] == ["ALL"]
    for name in ("install-cni", "network-config"):
        ctx = artifacts.daemonset_container(name, init=True)["securityContext"]
        assert ctx["capabilities"] == {"drop": ["ALL"]} and ctx["allowPrivilegeEscalation"] is False
    keys = {t.get("key") for t in spec["tolerations"]}
    assert {"node-role.kubernetes.io/control-plane", "node.kubernetes.io/not-ready"} <= keys
    # the compose test runs weftd with exactly these capabilities
    with open(os.path.join(REPO, "tests", "deploy", "docker-compose.yml")) as handle:
        compose = yaml.safe_load(handle)
    assert set(compose["x-weftd"]["cap_add"]) == DAEMONSET_CAPS and compose["x-weftd"]["cap_drop"] == ["ALL"]


def test_daemonset_install_container_runs_the_image_script():
    install = artifacts.daemonset_container("install-cni", init=True)
    assert install["command"][0] == "weft-install"
    script = os.path.join(CONF, "image", "weft-install")
    assert os.access(script, os.X_OK)
    text = open(script).read()
    mounts = {m["mountPath"] for m in install["volumeMounts"]}
    assert {"/host/opt", "/host/etc/cni/net.d"} <= mounts
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in install["env"]}
    assert env["WEFT_CONFLIST"].startswith("/etc/weft/")
    assert "WEFT_CONFLIST" in text
    # the conflist's cniVersion: weftctl install-conflist decides from the node's bin dir
    # and the runtime its Node reports (the Node named by NODE_NAME, read with the pod's
    # ServiceAccount); WEFT_CNI_VERSION (read by weftctl from the environment) overrides it
    assert 'weftctl" install-conflist "$conflist"' in text and '--cni-bin-dir "$host/opt/cni/bin"' in text
    assert install_conflist.VERSION_ENV in env
    if env[install_conflist.VERSION_ENV] != install_conflist.AUTO:
        chain_version.check_forced(env[install_conflist.VERSION_ENV], install_conflist.VERSION_ENV)
    assert env[node_runtime.NODE_NAME_ENV] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    if node_runtime.RUNTIME_ENV in env:
        node_runtime.stated(env[node_runtime.RUNTIME_ENV])
    config = artifacts.daemonset_container("network-config", init=True)
    assert "weftctl network set weft --config /etc/weft/net-conf.json" in config["args"][0]


def _kubelet_expand(text: str, env: dict) -> str:
    """What the kubelet does to a container's args: $(NAME) becomes the env var's value."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def test_network_config_init_container_stores_the_config_once(installed, tmp_path):
    """The init container's script, run with sh against a real etcd with TLS.  Stand-ins for
    what only a kubelet provides: the $(VAR) expansion, and the ConfigMap and Secret mounts
    (/etc/weft/net-conf.json, /etc/weft/etcd/*) as files in a scratch directory."""
    from lab.etcd import EtcdServer

    container = artifacts.daemonset_container("network-config", init=True)
    assert container["command"] == ["sh", "-c"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/etc/weft": "weft-config", "/etc/weft/etcd": "etcd-tls"}
    etcd = EtcdServer(tmp_path / "etcd", tls=True)
    etcd.start()
    try:
        tls = etcd.client_kwargs()
        mounted = tmp_path / "etc-weft"
        (mounted / "etcd").mkdir(parents=True)
        net_conf = artifacts.configmap_data()["net-conf.json"]
        (mounted / "net-conf.json").write_text(net_conf)
        for name, source in (("ca.crt", tls["cafile"]), ("tls.crt", tls["certfile"]), ("tls.key", tls["keyfile"])):
            shutil.copy(source, mounted / "etcd" / name)
        env = {e["name"]: e.get("value", "") for e in container["env"]}
        assert set(env) == {"WEFT_ETCD_ENDPOINTS", "ETCD_TLS"}
        env["WEFT_ETCD_ENDPOINTS"] = etcd.endpoint  # the ConfigMap's etcd-endpoints, pointed here
        script = _kubelet_expand(container["args"][0], env).replace("/etc/weft", str(mounted))
        assert "$(" not in script

        def init():
            return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60,
                                  env={"PATH": f"{installed}/bin:/usr/bin:/bin",
                                       "WEFT_ETCD_ENDPOINTS": env["WEFT_ETCD_ENDPOINTS"]})

        def stored():
            return etcd.etcdctl("get", "/weft/networks/weft/config", "--print-value-only", check=True).stdout

        # no config yet: `weftctl network get` exits 1 and the script stores net-conf.json
        first = init()
        assert first.returncode == 0, first
        assert json.loads(stored()) == json.loads(net_conf)
        # a config is there (an operator changed it): the script leaves it alone
        edited = json.dumps({**json.loads(net_conf), "MTU": 1400}, sort_keys=True)
        etcd.etcdctl("put", "/weft/networks/weft/config", edited, check=True)
        again = init()
        assert again.returncode == 0, again
        assert stored().strip() == edited
        # etcd unreachable: `network get` fails with 3, the init container fails with it
        etcd.stop()
        down = init()
        assert down.returncode == 3, down
        assert etcd.endpoint in down.stderr, down.stderr
    finally:
        etcd.cleanup()


# -- systemd and sysctl ----------------------------------------------------------------

def test_systemd_unit_verifies_and_starts_the_installed_weftd(tmp_path):
    unit = open(os.path.join(CONF, "weftd.service")).read()
    exec_start = re.search(r"^ExecStart=(\S+)", unit, re.M).group(1)
    makefile = open(os.path.join(REPO, "Makefile")).read()
    bin_dir = re.search(r"^BIN_DIR\s*\?=\s*(\S+)", makefile, re.M).group(1)
    assert exec_start == f"{bin_dir}/weftd", "the unit runs what `make install` installs"
    args_example = re.search(r'WEFTD_ARGS="([^"]+)"', unit).group(1)
    options.parse(args_example.split())
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed: `make deps` installs it (Debian package systemd)")
    # verify with ExecStart pointed at an executable that exists here
    copy = tmp_path / "weftd.service"
    copy.write_text(unit.replace(exec_start, "/bin/true"))
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    problems = [line for line in proc.stderr.splitlines() if "weftd.service" in line]
    assert not problems, proc.stderr


def test_sysctl_file_names_real_knobs():
    for line in open(os.path.join(CONF, "sysctl.d", "99-weft.conf")):
        line = line.split("#")[0].strip()
        if line:
            key, value = (part.strip() for part in line.split("="))
            assert os.path.exists("/proc/sys/" + key.replace(".", "/")), key
            assert value == "1"
