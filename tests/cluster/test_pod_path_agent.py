"""The per-pod path through weftd (issue 13, item 5): a caller that leaves is abandoned
and rolled back, never completed after a DEL; 11 means weft stopped; racing ADDs."""

import ipaddress
import json
import os
import socket
import subprocess
import time

from lab import attachment
from lab.attachment import holding, host_veth, wait_torn_down
from lab.cluster import wait_for
from lab.cni import invoke
from lab.namespaces import Namespace

from cni_plugin.cni import wire
from test_fast_path import VXLAN, fast_conf, one_node


def socket_path(node) -> str:
    return os.path.join(node.run_dir, "weftd.sock")


def cni(cluster, node, command, conf, pod, cid, extra_env=None, args=""):
    return invoke(f"{cluster.installed}/cni/weft", command, conf, container_id=cid, netns=pod.path,
                  ifname="eth0", cni_path=f"{cluster.installed}/cni", node=node.ns, extra_env=extra_env,
                  args=args)


def store_state(node, network="weft"):
    """(IP files, by-attachment names) of the node's weft-ipam store."""
    directory = os.path.join(node.ipam_dir, network)
    if not os.path.isdir(directory):
        return [], []
    ips = sorted(n for n in os.listdir(directory) if _is_ip(n))
    index = os.path.join(directory, "by-attachment")
    return ips, sorted(os.listdir(index)) if os.path.isdir(index) else []


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def links(ns) -> set:
    return {link["ifname"] for link in ns.ip_json("link", "show")}


def lock_file(node, cid: str) -> str:
    return attachment.lock_file(os.path.join(node.dir, "weft"), cid)


def vanish(node, env: dict, conf: dict, delay: float) -> None:
    """What a killed `weft` leaves: an ADD on weftd's socket whose caller is gone."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path(node))
    sock.sendall(wire.encode_request("weft", env, json.dumps(conf).encode()))
    time.sleep(delay)
    sock.close()


def test_add_whose_caller_vanishes_then_del_leaves_nothing_16_trials(cluster):
    node = one_node(cluster)
    conf = fast_conf(node)
    cni_dir = f"{cluster.installed}/cni"
    pods = [Namespace("wpa") for _ in range(16)]
    try:
        for trial, pod in enumerate(pods):
            cid = f"vanish{trial}"
            env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": pod.path,
                   "CNI_IFNAME": "eth0", "CNI_PATH": cni_dir}
            if trial % 2:
                vanish(node, env, conf, delay=(trial % 4) * 0.01)  # at once, or mid-ADD
            else:
                # the ADD is still queued (here: behind another call's lock) when its caller
                # dies, so the runtime's DEL could overtake it: weftd must abandon it first
                seen = node.log().count("the caller went away")
                with holding(lock_file(node, cid)):
                    vanish(node, env, conf, delay=(trial % 8) * 0.01)
                    wait_for(lambda: node.log().count("the caller went away") > seen, 30,
                             what=f"trial {trial}: weftd abandoning the queued ADD of a caller that left")
            out = cni(cluster, node, "DEL", conf, pod, cid)
            assert out.code == 0, f"trial {trial}: {out}"
            # DEL ran after the ADD (same lock) or before it started (then it abandons at once)
            wait_for(lambda: not os.path.exists(lock_file(node, cid)), 30,
                     what=f"trial {trial}: the abandoned ADD's lock file removed")
            assert host_veth(cid) not in links(node.ns), f"trial {trial}: host veth left"
            wait_torn_down(os.path.join(node.dir, "weft"))  # an ADD that committed: weftd tears it down
            assert "eth0" not in links(pod), f"trial {trial}: pod eth0 left"
            assert store_state(node) == ([], []), f"trial {trial}: reservation left"
        log = node.log()
        assert "the caller went away" in log, log[-2000:]
        # and the addresses are really free: a pod asking for the first one gets it
        first = Namespace("wpa")
        pods.append(first)
        out = cni(cluster, node, "ADD", conf, first, "after1", args=f"IP={_first_ip(node)}")
        assert out.code == 0, out
    finally:
        for pod in pods:
            pod.delete()


def _first_ip(node) -> str:
    with open(node.subnet_file()) as handle:
        subnet = dict(line.strip().split("=", 1) for line in handle if "=" in line)["WEFT_SUBNET"]
    return str(ipaddress.ip_interface(subnet).network.network_address + 2)


def test_deadline_abandons_the_call_11_means_stopped_and_the_retry_succeeds(cluster):
    node = one_node(cluster)
    conf = fast_conf(node)
    pod = Namespace("wpd")
    try:
        with holding(lock_file(node, "late1")):  # keeps weftd's ADD waiting past the deadline
            out = cni(cluster, node, "ADD", conf, pod, "late1", extra_env={"WEFT_AGENT_TIMEOUT": "1"})
            # weftd's own answer, sent once it stopped (a silent agent would be code 5)
            assert out.code == 1 and out.json["code"] == 11, out
            assert "abandoned the call" in out.json["msg"], out
            assert host_veth("late1") not in links(node.ns) and "eth0" not in links(pod)
            assert store_state(node) == ([], [])
        out = cni(cluster, node, "ADD", conf, pod, "late1")  # the runtime's retry
        assert out.code == 0, out
        assert "eth0" in links(pod) and len(store_state(node)[0]) == 1
        assert cni(cluster, node, "DEL", conf, pod, "late1").code == 0
    finally:
        pod.delete()


def test_racing_adds_of_one_attachment_through_agent_and_standalone(cluster):
    node = one_node(cluster)
    agent = fast_conf(node)
    standalone = node.netconf(agentSocket=os.path.join(node.dir, "no-agent.sock"))
    pod = Namespace("wpr")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(CNI_COMMAND="ADD", CNI_CONTAINERID="race1", CNI_NETNS=pod.path, CNI_IFNAME="eth0",
                   CNI_PATH=f"{cluster.installed}/cni")
        procs = [(subprocess.Popen(["ip", "netns", "exec", node.ns.name, f"{cluster.installed}/cni/weft"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env), conf)
                 for conf in [agent, standalone] * 4]
        outs = [(p.communicate(json.dumps(c).encode(), timeout=90)[0], p.returncode) for p, c in procs]
        assert [code for _, code in outs].count(0) == 1, outs
        assert {json.loads(o)["code"] for o, code in outs if code} == {102}, outs
        (winner,) = [json.loads(o) for o, code in outs if code == 0]
        ips, index = store_state(node)
        assert ips == [winner["ips"][0]["address"].split("/")[0]] and index == ["race1:eth0"]
        assert host_veth("race1") in links(node.ns) and "eth0" in links(pod)
        check = cni(cluster, node, "CHECK", {**agent, "prevResult": winner}, pod, "race1")
        assert check.code == 0, check
    finally:
        pod.delete()


def test_tls_files_with_a_plain_http_endpoint_are_refused(cluster):
    cluster.set_network("weft", VXLAN)
    proc = cluster.weftctl("leases", "--etcd-cafile", "/etc/ssl/certs/ca-certificates.crt", check=False)
    assert proc.returncode != 0
    assert "plain http" in proc.stderr and cluster.etcd.endpoint.split("//")[1] in proc.stderr, proc.stderr
    assert "https://" in proc.stderr, proc.stderr
