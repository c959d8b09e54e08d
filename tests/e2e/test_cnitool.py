"""The installed weft driven through Debian's libcni 1.1.2 by weft's cnitool.

libcni is what containerd, podman and CRI-O call plugins with; here it reads the
conflist from NETCONFPATH, threads results, caches them for CHECK and DEL, and turns a
plugin's error JSON into the error a runtime surfaces.  Every check reads the kernel
(`ip -j` in the node and pod namespaces) and weft-ipam's store on disk.
"""

import ipaddress
import json
import os
import re
import subprocess
import sys

import pytest

from lab.cnitool import REPO, Driver, inet, ipam_state, links, veths, weft_conflist
from lab.namespaces import suffix

SUBNET = "10.22.0.0/24"


@pytest.fixture
def node(netns):
    return netns("wcnode")


@pytest.fixture
def pods(netns):
    return lambda: netns("wcpod")


@pytest.fixture
def network(cnitool, installed, node, tmp_path):
    """(driver, network name, bridge) for a standalone weft network on `node`."""
    name, bridge = f"wc{suffix()}", f"cbc{suffix(5)}"
    driver = Driver(cnitool, node, tmp_path, f"{installed}/cni:/usr/lib/cni")
    driver.write(weft_conflist(tmp_path, name, SUBNET, bridge))
    return driver, name, bridge


def assert_nothing_left(driver, node, pod, network_name):
    assert "eth0" not in links(pod), pod.ip("link")
    assert veths(node) == [], node.ip("link")
    assert ipam_state(driver.work, network_name) == ([], []), "weft-ipam kept a reservation"
    assert driver.cached_results() == [], "libcni kept a cached result"


def test_add_check_del_through_libcni(network, node, pods, tmp_path):
    driver, name, bridge = network
    pod = pods()
    added = driver("add", name, pod)
    assert added.code == 0, str(added)
    result = added.json
    assert result["cniVersion"] == "1.0.0"
    sandbox = [i for i, iface in enumerate(result["interfaces"]) if iface.get("sandbox")]
    assert [result["interfaces"][i]["name"] for i in sandbox] == ["eth0"]
    assert result["interfaces"][sandbox[0]]["sandbox"] == pod.path
    [ip] = result["ips"]
    assert ip["interface"] == sandbox[0]
    address = ipaddress.ip_interface(ip["address"])
    assert address.network == ipaddress.ip_network(SUBNET) and address.ip != address.network.network_address

    # the kernel agrees with the result
    eth0 = links(pod)["eth0"]
    assert inet(eth0) == [ip["address"]]
    assert eth0["address"] == result["interfaces"][sandbox[0]]["mac"]
    routes = pod.ip_json("route", "show")
    assert [(r["dev"], r.get("gateway")) for r in routes if r["dst"] == "default"] == [("eth0", ip["gateway"])]
    [host_veth] = veths(node)
    assert host_veth in [iface["name"] for iface in result["interfaces"]]
    assert node.ip_json("link", "show", host_veth)[0]["master"] == bridge
    assert ipam_state(tmp_path, name)[0] == [str(address.ip)]
    assert len(driver.cached_results()) == 1
    assert os.path.exists(f"{tmp_path}/weft.log"), "weft logs every call it serves"

    checked = driver("check", name, pod)
    assert checked.code == 0, str(checked)

    # CHECK reads the kernel: an address taken away is reported with weft's code
    pod.run(["ip", "addr", "del", ip["address"], "dev", "eth0"])
    broken = driver("check", name, pod)
    assert broken.code == 1 and broken.cni_code is not None, str(broken)
    assert str(address.ip) in broken.stderr

    deleted = driver("del", name, pod)
    assert deleted.code == 0, str(deleted)
    assert_nothing_left(driver, node, pod, name)
    again = driver("del", name, pod)
    assert again.code == 0, f"a second DEL must succeed: {again}"


def test_cni_args_and_capability_args_reach_weft(network, installed, node, pods, tmp_path):
    driver, name, _ = network
    pod = pods()
    wanted_ip, wanted_mac = "10.22.0.77", "02:00:0a:16:00:4d"
    added = driver("add", name, pod, ifname="net1",
                   cni_args="IgnoreUnknown=true;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0",
                   cap_args={"ips": [f"{wanted_ip}/24"], "mac": wanted_mac})
    assert added.code == 0, str(added)
    net1 = links(pod)["net1"]
    assert inet(net1) == [f"{wanted_ip}/24"] and net1["address"] == wanted_mac
    assert "eth0" not in links(pod)
    # the pod identity in CNI_ARGS lands in the allocation history
    whois = subprocess.run([f"{installed}/bin/weftctl", "whois", wanted_ip, "--data-dir", f"{tmp_path}/ipam",
                            "--json"], capture_output=True, text=True, timeout=60)
    assert whois.returncode == 0, whois.stderr
    holders = json.loads(whois.stdout)["holders"]
    assert len(holders) == 1 and "shop" in json.dumps(holders) and "cart-0" in json.dumps(holders), holders

    deleted = driver("del", name, pod, ifname="net1")
    assert deleted.code == 0, str(deleted)
    assert "net1" not in links(pod) and veths(node) == []
    assert ipam_state(tmp_path, name) == ([], [])


def test_a_taken_static_ip_fails_with_the_ipam_error_and_leaks_nothing(network, node, pods, tmp_path):
    driver, name, _ = network
    first, second = pods(), pods()
    taken = {"ips": ["10.22.0.9/24"]}
    assert driver("add", name, first, cap_args=taken).code == 0
    held = veths(node)
    refused = driver("add", name, second, cap_args=taken)
    assert refused.code == 1, str(refused)
    assert refused.cni_code == 101, str(refused)  # weft-ipam: address in use
    assert 'plugin type="weft" failed (add)' in refused.stderr and "10.22.0.9" in refused.stderr
    assert "already allocated" in refused.stderr
    # the refused attachment left nothing: no veth, no interface, no reservation, no cache
    assert veths(node) == held
    assert "eth0" not in links(second)
    addresses, attachments = ipam_state(tmp_path, name)
    assert addresses == ["10.22.0.9"] and len(attachments) == 1
    assert len(driver.cached_results()) == 1
    assert driver("del", name, first).code == 0
    assert_nothing_left(driver, node, first, name)


@pytest.mark.parametrize("case", ["empty dir", "other network only", "truncated json", "no ipam"])
def test_a_missing_or_broken_conflist_is_refused_and_leaks_nothing(case, network, node, pods, tmp_path):
    driver, name, bridge = network
    pod = pods()
    conf_dir = tmp_path / "bad.d"
    conf_dir.mkdir()
    if case == "other network only":
        (conf_dir / "other.conflist").write_text(json.dumps(weft_conflist(tmp_path, "other", SUBNET, bridge)))
    elif case == "truncated json":
        (conf_dir / "x.conflist").write_text(json.dumps(weft_conflist(tmp_path, name, SUBNET, bridge))[:-9])
    elif case == "no ipam":
        conflist = weft_conflist(tmp_path, name, SUBNET, bridge)
        del conflist["plugins"][0]["ipam"]
        (conf_dir / "x.conflist").write_text(json.dumps(conflist))
    run = driver("add", name, pod, netconf_dir=str(conf_dir))
    assert run.code == 1, str(run)
    expected = {
        "empty dir": (f"no net configurations found in {conf_dir}", None),
        "other network only": (f'no net configuration with name "{name}" in {conf_dir}', None),
        "truncated json": ("error parsing configuration list", None),
        "no ipam": ('plugin type="weft" failed (add): network configuration has no ipam section', 7),
    }[case]
    assert expected[0] in run.stderr and run.cni_code == expected[1], str(run)
    assert_nothing_left(driver, node, pod, name)


@pytest.mark.parametrize("env,message", [
    ({"cni_args": "K8S_POD_NAME"}, 'CNI_ARGS: "K8S_POD_NAME" is not KEY=VALUE'),
    ({"cap_args": ["10.22.0.9/24"]}, "CAP_ARGS is not a JSON object"),
])
def test_malformed_driver_arguments_are_refused_before_any_plugin_runs(env, message, network, node, pods):
    driver, name, _ = network
    pod = pods()
    run = driver("add", name, pod, **env)
    assert run.code == 1 and message in run.stderr and run.cni_code is None, str(run)
    assert_nothing_left(driver, node, pod, name)
    assert not os.path.exists(f"{driver.work}/weft.log"), "weft was called"


def test_libcni_1_1_2_refuses_a_1_1_0_result_and_del_then_cleans_up(cnitool, installed, node, pods, tmp_path):
    """What the docs' cniVersion advice rests on: libcni 1.1.2 (Debian 12's, as in
    containerd 1.6) cannot parse a 1.1.0 result.  weft's ADD did its work, so the
    runtime's DEL (here cnitool's, without a cached result) must undo it."""
    name = f"wc{suffix()}"
    driver = Driver(cnitool, node, tmp_path, f"{installed}/cni:/usr/lib/cni")
    driver.write(weft_conflist(tmp_path, name, SUBNET, f"cbc{suffix(5)}", version="1.1.0"))
    pod = pods()
    run = driver("add", name, pod)
    assert run.code == 1 and 'unsupported CNI result version "1.1.0"' in run.stderr, str(run)
    assert driver.cached_results() == []
    deleted = driver("del", name, pod)
    assert deleted.code == 0, str(deleted)
    assert_nothing_left(driver, node, pod, name)


# -- docs/runtimes.md's "Try it by hand with cnitool", run as written ---------------------------

RUNTIMES = os.path.join(REPO, "docs", "runtimes.md")


def readme_cnitool_block():
    text = open(RUNTIMES).read()
    start = text.index("## Try it by hand with cnitool")
    section = text[start:text.index("\n## ", start + 1)]
    [conflist] = re.findall(r"```json\n(.*?)```", section, re.S)
    [block] = re.findall(r"<!-- tested -->\n```sh\n(.*?)```", section, re.S)
    return json.loads(conflist), block.splitlines()


def test_readme_shows_the_shipped_try_conflist():
    shown, _ = readme_cnitool_block()
    with open(os.path.join(REPO, "conf", "cnitool", "weft-try.conflist")) as handle:
        assert shown == json.loads(handle.read())


def test_readme_cnitool_commands_run_as_written(cnitool, installed, tmp_path):
    """Each line of the docs/runtimes.md block runs in a shell from the checkout.  Only what would
    touch this machine's own state is redirected: the install goes to the test's
    directories, the namespaces get unique names, weft and libcni write under tmp_path."""
    conflist, lines = readme_cnitool_block()
    plugin = conflist["plugins"][0]
    plugin.update(dataDir=f"{tmp_path}/weft", logFile=f"{tmp_path}/weft.log",
                  agentSocket=f"{tmp_path}/no-agent.sock")
    plugin["ipam"]["dataDir"] = f"{tmp_path}/ipam"
    (tmp_path / "net.d").mkdir()
    (tmp_path / "net.d" / "weft-try.conflist").write_text(json.dumps(conflist))
    tag = suffix()
    node_name, pod_name = f"try-node-{tag}", f"try-pod-{tag}"
    substitutions = [
        ("make install cnitool", f"make -s -C {REPO} install cnitool VENV={sys.prefix} "
                                 f"CNI_BIN_DIR={installed}/cni BIN_DIR={installed}/bin"),
        ("weftctl whois 10.22.0.9", f"{installed}/bin/weftctl whois 10.22.0.9 --data-dir {tmp_path}/ipam"),
        ("NETCONFPATH=conf/cnitool", f"CNI_CACHE_DIR={tmp_path}/cache NETCONFPATH={tmp_path}/net.d"),
        ("CNI_PATH=/opt/cni/bin:", f"CNI_PATH={installed}/cni:"),
        ("try-node", node_name),
        ("try-pod", pod_name),
    ]
    script = "\n".join(lines)
    for old, new in substitutions:
        assert old in script, f"the docs/runtimes.md block no longer says {old!r}: update this test with it"
        script = script.replace(old, new)
    outputs = []
    try:
        for line in script.splitlines():
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=REPO, capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 0, f"{line}\n{proc.stderr}"
            outputs.append(proc.stdout)
    finally:
        for name in (pod_name, node_name):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    by_line = dict(zip(lines, outputs))
    added = json.loads(next(out for line, out in by_line.items() if " add weft-try " in line))
    assert [ip["address"] for ip in added["ips"]] == ["10.22.0.9/24"]
    assert added["ips"][0]["gateway"] == "10.22.0.1"
    shown = by_line["ip -n try-pod -br addr show eth0"]
    assert "10.22.0.9/24" in shown and shown.split()[0].startswith("eth0")
    assert "default/try" in by_line["weftctl whois 10.22.0.9"]
    assert ipam_state(tmp_path, "weft-try") == ([], [])
    assert os.listdir(tmp_path / "cache" / "results") == []
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert node_name not in names and pod_name not in names
