"""weft as a Multus secondary network chosen by a pod annotation: the part of Multus that
needs a Kubernetes API server, played here by libcni.

The real Multus binary runs weft in tests/cluster/test_multus.py and
tests/e2e/test_containerd_multus.py, with the delegates of its own config
(conf/multus/00-multus.conflist).  What it does with a kubeconfig (read the pod's
k8s.v1.cni.cncf.io/networks annotation, fetch NetworkAttachmentDefinitions, pass a
selection's ips/mac/portMappings, write network-status) needs an API server, which no
package here provides.  So this file plays that part: Multus calls its delegates through
libcni, and so does this test, with weft's cnitool (tools/cnitool) built against Debian's
libcni 1.1.2.  The pod first gets the
cluster-default network (conf/10-weft.conflist: weft + portmap, as the runtime runs
it).  Then, for the pod annotation

    k8s.v1.cni.cncf.io/networks: '[{"name": "weft2", "ips": ["10.245.3.50/24"], "mac": "02:00:0a:f5:03:32"},
                                   {"name": "weft3", "portMappings": [{"hostPort": 8080, "containerPort": 80, ...}]}]'

Multus runs the NetworkAttachmentDefinition weft2 (conf/kubernetes, a single-plugin
spec.config) as net1 and a second weft network weft3 (a conflist: weft + portmap) as
net2, each with the sandbox ID as CNI_CONTAINERID, CNI_ARGS
IgnoreUnknown=true;K8S_POD_NAMESPACE;K8S_POD_NAME;K8S_POD_INFRA_CONTAINER_ID;K8S_POD_UID
and the selection's ips/mac/portMappings as capability args (libcni hands each plugin
only the capabilities its config declares).  The node's subnet files are written by
hand (no agent needed); everything runs in namespaces the test made.
"""

import ipaddress
import json
import subprocess
import sys
import uuid

import pytest

from lab.cluster import serve_tcp
from lab.cni import invoke, path_without_ip6tables
from lab.cnitool import Driver, inet, ipam_state, links, veths
from lab.namespaces import stop_process

from . import artifacts
from .artifacts import REPO

POD_NAMESPACE, POD_NAME = "default", "web-0"
NET1_IP, NET1_MAC = "10.245.3.50", "02:00:0a:f5:03:32"
HOST_PORT, CONTAINER_PORT = 8080, 80
NAMESERVER, SEARCH = "10.96.0.10", "default.svc.cluster.local"


def network_status(result: dict, name: str, default: bool) -> dict:
    """One entry of k8s.v1.cni.cncf.io/network-status as Multus builds it from a CNI result
    (net-attach-def-client CreateNetworkStatus): the sandbox interface's name, MAC and
    MTU, the result's IPs of that interface without prefix, gateways of default routes
    only, dns, default flag."""
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
def node(netns):
    return netns("wmnode")


@pytest.fixture
def pod(netns):
    return netns("wmpod")


def _lease(path, network, subnet):
    """The subnet file weftd would write (its format is a documented contract)."""
    path.write_text(f"WEFT_NETWORK={network}\nWEFT_SUBNET={subnet}\nWEFT_MTU=1450\nWEFT_IPMASQ=false\n")


def _local(conf: dict, tmp_path, name: str) -> dict:
    """The node paths of a shipped config, moved into the test's directory."""
    conf = json.loads(json.dumps(conf))
    conf.update(subnetFile=str(tmp_path / f"{name}.env"), dataDir=str(tmp_path / "weft"),
                logFile=str(tmp_path / "weft.log"), agentSocket=str(tmp_path / "no-agent.sock"))
    conf["ipam"]["dataDir"] = str(tmp_path / "ipam")
    return conf


def _networks(driver, tmp_path):
    """Write the three networks into the driver's NETCONFPATH, as a node and Multus hold them."""
    _lease(tmp_path / "weft.env", "10.244.0.0/16", "10.244.3.1/24")
    _lease(tmp_path / "weft2.env", "10.245.0.0/16", "10.245.3.1/24")
    _lease(tmp_path / "weft3.env", "10.246.0.0/16", "10.246.3.1/24")
    primary = artifacts.load_json(f"{artifacts.CONF}/10-weft.conflist")
    primary["plugins"][0] = _local(primary["plugins"][0], tmp_path, "weft")
    driver.write(primary, "10-weft.conflist")
    # the NAD's spec.config exactly as shipped (bar node paths): a single-plugin config,
    # which libcni turns into a one-plugin list as it does for Multus
    nad = _local(artifacts.nad_config(), tmp_path, "weft2")
    driver.write(json.dumps(nad), "weft2.conf")
    # a second weft network: its own bridge and subnet, DNS from a resolv.conf, portmap chained
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {NAMESERVER}\nsearch {SEARCH}\n")
    weft3 = _local({**nad, "name": "weft3", "bridge": "cbr2"}, tmp_path, "weft3")
    weft3["ipam"]["resolvConf"] = str(resolv)
    entry = {k: v for k, v in weft3.items() if k not in ("cniVersion", "name")}
    driver.write({"cniVersion": nad["cniVersion"], "name": "weft3",
                  "plugins": [entry, {"type": "portmap", "capabilities": {"portMappings": True}}]})
    return primary, nad


def _kernel_view(pod, ifname):
    """What must not change on one interface: MAC, MTU, addresses, its routes."""
    link = links(pod)[ifname]
    routes = [r for r in pod.ip_json("route", "show") if r.get("dev") == ifname]
    return link["address"], link["mtu"], inet(link), routes


def _nat_rules(node):
    return node.run(["iptables-save", "-t", "nat"], check=False).stdout


def test_secondary_networks_as_multus_delegates_them(cnitool, installed, node, pod, tmp_path):
    driver = Driver(cnitool, node, tmp_path, f"{installed}/cni:/usr/lib/cni")
    primary_list, nad = _networks(driver, tmp_path)
    assert nad["cniVersion"] == "1.0.0"            # the newest libcni 1.1.2 accepts
    assert set(nad["capabilities"]) == {"ips", "mac"}
    sandbox = uuid.uuid4().hex + uuid.uuid4().hex
    pod_uid = str(uuid.uuid4())
    cni_args = (f"IgnoreUnknown=true;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={POD_NAME};"
                f"K8S_POD_INFRA_CONTAINER_ID={sandbox};K8S_POD_UID={pod_uid}")
    path = path_without_ip6tables(tmp_path)      # portmap 1.1.1: see lab.cni
    calls = {"eth0": ("weft", None),
             "net1": ("weft2", {"ips": [f"{NET1_IP}/24"], "mac": NET1_MAC}),
             "net2": ("weft3", {"portMappings": [{"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT,
                                                  "protocol": "tcp"}]})}

    def cnitool(command, ifname):
        network, caps = calls[ifname]
        return driver(command, network, pod, ifname=ifname, cni_args=cni_args, cap_args=caps,
                      container_id=sandbox, path=path)

    results, server = {}, None
    try:
        for ifname in ("eth0", "net1", "net2"):
            added = cnitool("add", ifname)
            assert added.code == 0, f"{ifname}: {added}"
            results[ifname] = added.json
        kernel = links(pod)

        # the annotation Multus writes, checked field by field against the kernel
        statuses = {"eth0": network_status(results["eth0"], primary_list["name"], True),
                    "net1": network_status(results["net1"], f"{POD_NAMESPACE}/weft2", False),
                    "net2": network_status(results["net2"], f"{POD_NAMESPACE}/weft3", False)}
        default_routes = [r for r in pod.ip_json("route", "show") if r["dst"] == "default"]
        for ifname, status in statuses.items():
            result = results[ifname]
            assert status["interface"] == ifname
            assert status["mac"] == kernel[ifname]["address"]
            assert status["ips"] == [str(ipaddress.ip_interface(a).ip) for a in inet(kernel[ifname])]
            assert len(status["ips"]) == 1
            sandbox_ifaces = [i for i, iface in enumerate(result["interfaces"]) if iface.get("sandbox") == pod.path]
            assert [result["interfaces"][i]["name"] for i in sandbox_ifaces] == [ifname]
            assert all(ip["interface"] == sandbox_ifaces[0] for ip in result["ips"])
            # cniVersion 1.0.0 results carry no interface MTU, so the annotation has none
            assert "mtu" not in status and kernel[ifname]["mtu"] == 1450
        assert statuses["net1"]["ips"] == [NET1_IP] and statuses["net1"]["mac"] == NET1_MAC
        assert ipaddress.ip_address(statuses["net2"]["ips"][0]) in ipaddress.ip_network("10.246.3.0/24")
        # only the cluster-default network has a gateway, and it is the pod's one default route
        assert [(r["dev"], r["gateway"]) for r in default_routes] == [("eth0", "10.244.3.1")]
        assert statuses["eth0"]["gateway"] == ["10.244.3.1"]
        assert "gateway" not in statuses["net1"] and "gateway" not in statuses["net2"]
        routes = pod.ip_json("route", "show")
        for ifname, cluster, gateway in (("net1", "10.245.0.0/16", "10.245.3.1"),
                                         ("net2", "10.246.0.0/16", "10.246.3.1")):
            assert any(r["dst"] == cluster and r["dev"] == ifname and r.get("gateway") == gateway
                       for r in routes), routes
        assert statuses["eth0"]["dns"] == {} and statuses["net1"]["dns"] == {}
        assert statuses["net2"]["dns"] == {"nameservers": [NAMESERVER], "search": [SEARCH]}
        # each network on its own bridge in the node
        bridges = {link["ifname"] for link in node.ip_json("link", "show", "type", "bridge")}
        assert {"cbr0", "cbr1", "cbr2"} <= bridges
        assert len(veths(node)) == 3

        # the pod identity in CNI_ARGS reached the allocation history
        whois = subprocess.run([f"{installed}/bin/weftctl", "whois", NET1_IP, "--data-dir", f"{tmp_path}/ipam",
                                "--json"], capture_output=True, text=True, timeout=60)
        assert whois.returncode == 0, whois.stderr
        [holder] = json.loads(whois.stdout)["holders"]
        assert (holder["podNamespace"], holder["podName"], holder["containerID"], holder["ifname"]) == \
            (POD_NAMESPACE, POD_NAME, sandbox, "net1")

        # net2's portMappings reached portmap: the node's port 8080 leads to net2's port 80
        net2_ip = statuses["net2"]["ips"][0]
        assert f"{net2_ip}:{CONTAINER_PORT}" in _nat_rules(node)
        server = serve_tcp(pod, net2_ip, CONTAINER_PORT, 1)
        seen = node.run([sys.executable, "-m", "lab.tcp_echo", "ask", "10.244.3.1", str(HOST_PORT)],
                        check=False, cwd=REPO)
        assert seen.returncode == 0, f"node:{HOST_PORT} did not reach {net2_ip}:{CONTAINER_PORT}: {seen.stderr}"
        stop_process(server, 10)

        # CHECK as libcni does it, with the cached ADD result as prevResult
        for ifname in ("net1", "net2"):
            checked = cnitool("check", ifname)
            assert checked.code == 0, f"{ifname}: {checked}"

        # pod deletion starts with the secondaries: DEL of net1 leaves eth0 and net2 as they were
        before = {ifname: _kernel_view(pod, ifname) for ifname in ("eth0", "net2")}
        host_veths = set(veths(node))
        deleted = cnitool("del", "net1")
        assert deleted.code == 0, str(deleted)
        assert "net1" not in links(pod)
        assert {ifname: _kernel_view(pod, ifname) for ifname in ("eth0", "net2")} == before
        assert len(set(veths(node))) == 2 and set(veths(node)) < host_veths
        assert ipam_state(tmp_path, "weft2") == ([], [])
        assert ipam_state(tmp_path, "weft")[0] == [statuses["eth0"]["ips"][0]]
    finally:
        stop_process(server, 10)
        outcomes = {ifname: cnitool("del", ifname) for ifname in ("net2", "net1", "eth0")}
    for ifname, outcome in outcomes.items():
        assert outcome.code == 0, f"DEL {ifname}: {outcome}"
    assert veths(node) == [] and set(links(pod)) == {"lo"}
    for network in ("weft", "weft2", "weft3"):
        assert ipam_state(tmp_path, network) == ([], []), network
    assert f":{CONTAINER_PORT}" not in _nat_rules(node)
    assert driver.cached_results() == []


def test_the_multus_conflist_delegates_to_the_shipped_networks():
    """conf/multus/00-multus.conflist runs weft's shipped networks: the default conflist's
    weft entry as eth0 (portmap left out: Multus would need the portMappings capability
    too) and conf/weft-secondary.conflist as net1, each a network of its own."""
    conflist = artifacts.load_json(artifacts.MULTUS_CONFLIST)
    (entry,) = conflist["plugins"]
    assert entry["type"] == "multus" and "kubeconfig" not in entry and "clusterNetwork" not in entry
    primary = artifacts.load_json(f"{artifacts.CONF}/10-weft.conflist")
    secondary = artifacts.load_json(f"{artifacts.CONF}/weft-secondary.conflist")
    first, second = entry["delegates"]
    assert first == {**primary, "plugins": primary["plugins"][:1]}
    assert second == secondary
    assert {first["cniVersion"], second["cniVersion"]} == {conflist["cniVersion"]} == {"1.0.0"}
    weft, weft2 = first["plugins"][0], second["plugins"][0]
    assert weft["bridge"] != weft2["bridge"] and first["name"] != second["name"]
    assert weft.get("isDefaultGateway") is True and weft2["isDefaultGateway"] is False
    assert weft2["subnetFile"] == f"/run/weft/{second['name']}.env"


def test_a_cni_1_1_delegate_reports_the_mtu_multus_records(installed, cni_path, node, pod, tmp_path):
    """A Multus built on libcni 1.2 or later accepts cniVersion 1.1.0 delegates, whose
    results name the interface MTU: the annotation's mtu is then the kernel's."""
    _lease(tmp_path / "weft2.env", "10.245.0.0/16", "10.245.3.1/24")
    delegate = _local(artifacts.nad_config(), tmp_path, "weft2")
    delegate.pop("capabilities")
    delegate.update(cniVersion="1.1.0", runtimeConfig={"ips": [f"{NET1_IP}/24"], "mac": NET1_MAC})
    call = dict(container_id=uuid.uuid4().hex, netns=pod.path, ifname="net1", cni_path=cni_path, node=node,
                args=f"IgnoreUnknown=true;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={POD_NAME}")
    added = invoke(f"{installed}/cni/weft", "ADD", delegate, **call)
    assert added.code == 0, str(added)
    try:
        status = network_status(added.json, f"{POD_NAMESPACE}/weft2", False)
        net1 = links(pod)["net1"]
        assert status["mtu"] == net1["mtu"] == 1450
        assert status["mac"] == net1["address"] == NET1_MAC
        assert [f"{ip}/24" for ip in status["ips"]] == inet(net1)
    finally:
        deleted = invoke(f"{installed}/cni/weft", "DEL", delegate, **call)
    assert deleted.code == 0, str(deleted)
    assert "net1" not in links(pod) and veths(node) == []
