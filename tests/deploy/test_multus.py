"""weft as a Multus secondary network, invoked exactly as Multus invokes a delegate.

The pod first gets the cluster-default network (conf/10-weft.conflist: weft + portmap,
as the runtime runs it); then Multus, for the pod annotation `k8s.v1.cni.cncf.io/networks:
weft2`, runs the NetworkAttachmentDefinition's spec.config with CNI_IFNAME=net1, its
CNI_ARGS (IgnoreUnknown, K8S_POD_*) and the pod's requested ips/mac as runtimeConfig
capability args.  The node's subnet files are written by hand (no agent needed); the
plugin runs inside a node namespace the test made.
"""

import ipaddress
import json
import uuid

import pytest

from cni_plugin.subnet import subnet_file
from lab.cni import invoke, run_chain
from lab.namespaces import Namespace

from . import artifacts

POD_NAMESPACE, POD_NAME = "default", "web-0"
NET1_IP, NET1_MAC = "10.245.3.50", "02:00:0a:f5:03:32"


def network_status(result: dict, name: str, default: bool) -> dict:
    """One entry of k8s.v1.cni.cncf.io/network-status as Multus builds it from a CNI result
    (net-attach-def-client CreateNetworkStatus): the sandbox interface's name and MAC, the
    result's IPs without prefix, gateways of default routes only, dns, default flag."""
    status = {"name": name, "interface": None, "ips": [], "mac": None, "default": default,
              "dns": {}}
    sandbox = [i for i, iface in enumerate(result.get("interfaces", [])) if iface.get("sandbox")]
    if sandbox:
        iface = result["interfaces"][sandbox[-1]]
        status["interface"], status["mac"] = iface["name"], iface["mac"]
        if iface.get("mtu"):
            status["mtu"] = iface["mtu"]
    for ip in result.get("ips", []):
        if ip.get("interface") is None or ip["interface"] in sandbox:
            status["ips"].append(str(ipaddress.ip_interface(ip["address"]).ip))
    gateways = [r["gw"] for r in result.get("routes", [])
                if ipaddress.ip_network(r["dst"]).prefixlen == 0 and r.get("gw")]
    if gateways:
        status["gateway"] = gateways
    dns = result.get("dns") or {}
    status["dns"] = {k: v for k, v in dns.items() if v}
    if not default:
        del status["default"]  # `default,omitempty`
    return status


@pytest.fixture
def node():
    ns = Namespace("wmnode")
    yield ns
    ns.delete()


@pytest.fixture
def pod():
    ns = Namespace("wmpod")
    yield ns
    ns.delete()


def _lease(path, network, subnet):
    subnet_file.write(str(path), subnet_file.SubnetLease(
        network=ipaddress.IPv4Network(network), subnet=ipaddress.IPv4Interface(subnet), mtu=1450,
        ipmasq=False))


def _local(conf: dict, tmp_path, name: str) -> dict:
    """The node paths of a shipped config, moved into the test's directory."""
    conf = json.loads(json.dumps(conf))
    conf.update(subnetFile=str(tmp_path / f"{name}.env"), dataDir=str(tmp_path / "weft"),
                logFile=str(tmp_path / "weft.log"), agentSocket=str(tmp_path / "no-agent.sock"))
    conf["ipam"]["dataDir"] = str(tmp_path / "ipam")
    return conf


def test_secondary_network_as_multus_delegates_it(installed, cni_path, node, pod, tmp_path):
    _lease(tmp_path / "weft.env", "10.244.0.0/16", "10.244.3.1/24")
    _lease(tmp_path / "weft2.env", "10.245.0.0/16", "10.245.3.1/24")
    sandbox = uuid.uuid4().hex + uuid.uuid4().hex[:32]
    pod_uid = str(uuid.uuid4())
    cni_args = (f"IgnoreUnknown=true;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={POD_NAME};"
                f"K8S_POD_INFRA_CONTAINER_ID={sandbox};K8S_POD_UID={pod_uid}")

    # the cluster-default network, as the runtime (through Multus) runs it
    primary_list = artifacts.load_json(f"{artifacts.CONF}/10-weft.conflist")
    primary_list["plugins"][0] = _local(primary_list["plugins"][0], tmp_path, "weft")
    out, primary = run_chain(primary_list["plugins"], "ADD", primary_list, cni_path,
                             container_id=sandbox, netns=pod.path, ifname="eth0", node=node,
                             args=cni_args)
    assert out.code == 0, str(out)

    # the secondary: the NAD's spec.config plus what Multus adds for the pod's selection
    # {"name": "weft2", "ips": [...], "mac": ...}: runtimeConfig for declared capabilities
    nad = artifacts.nad_config()
    delegate = _local(nad, tmp_path, "weft2")
    assert set(delegate.pop("capabilities")) == {"ips", "mac"}
    delegate["runtimeConfig"] = {"ips": [f"{NET1_IP}/24"], "mac": NET1_MAC}
    secondary_out = invoke(f"{installed}/cni/weft", "ADD", delegate, container_id=sandbox,
                           netns=pod.path, ifname="net1", cni_path=cni_path, node=node, args=cni_args)
    assert secondary_out.code == 0, str(secondary_out)
    secondary = secondary_out.json
    try:
        # net1: the requested address and MAC, the cluster route of weft2, no default route
        links = {link["ifname"]: link for link in pod.ip_json("addr", "show")}
        net1 = links["net1"]
        assert net1["address"] == NET1_MAC
        assert [f"{a['local']}/{a['prefixlen']}" for a in net1["addr_info"] if a["family"] == "inet"] == \
            [f"{NET1_IP}/24"]
        routes = pod.ip_json("route", "show")
        defaults = [r for r in routes if r["dst"] == "default"]
        assert [(r["dev"], r["gateway"]) for r in defaults] == [("eth0", "10.244.3.1")]
        assert any(r["dst"] == "10.245.0.0/16" and r["dev"] == "net1" and r.get("gateway") == "10.245.3.1"
                   for r in routes), routes
        # eth0 kept its address; net1 went on the secondary's own bridge
        assert any(a["local"].startswith("10.244.3.") for a in links["eth0"]["addr_info"] if a["family"] == "inet")
        bridges = {link["ifname"] for link in node.ip_json("link", "show", "type", "bridge")}
        assert {"cbr0", "cbr1"} <= bridges

        # the pod annotation Multus writes
        statuses = [network_status(primary, primary_list["name"], True),
                    network_status(secondary, f"{POD_NAMESPACE}/{nad['name']}", False)]
        assert statuses[1] == {"name": "default/weft2", "interface": "net1", "ips": [NET1_IP],
                               "mac": NET1_MAC, "dns": {}}
        assert statuses[0]["interface"] == "eth0" and statuses[0]["default"] is True
        assert statuses[0]["gateway"] == ["10.244.3.1"]

        # CHECK as libcni does it, with the ADD result as prevResult
        check = invoke(f"{installed}/cni/weft", "CHECK", {**delegate, "prevResult": secondary},
                       container_id=sandbox, netns=pod.path, ifname="net1", cni_path=cni_path,
                       node=node, args=cni_args)
        assert check.code == 0, str(check)
    finally:
        # pod deletion: Multus deletes the secondary attachments, then the default network
        deleted = invoke(f"{installed}/cni/weft", "DEL", delegate, container_id=sandbox, netns=pod.path,
                         ifname="net1", cni_path=cni_path, node=node, args=cni_args)
        assert deleted.code == 0, str(deleted)
        assert "net1" not in {link["ifname"] for link in pod.ip_json("link", "show")}
        out, _ = run_chain(primary_list["plugins"], "DEL", primary_list, cni_path, container_id=sandbox, netns=pod.path,
                           ifname="eth0", node=node, args=cni_args)
        assert out.code == 0, str(out)
