"""DEL off the caller's path (plugin/teardown.py, agent/teardown_queue.py): each rule of
the completion contract against a real weftd, real namespaces and the kernel's state.

The worker's steps are held up at a chosen point by holding, from the test, a lock
the step needs, as another call would: the port records' lock (step 1, before
anything is deleted) or the IPAM store's lock (the release, after everything else).
"""

import fcntl
import ipaddress
import json
import os
import sys
import threading
from contextlib import contextmanager

import pytest
import yaml

from cni_plugin.guard import ports
from lab.attachment import holding, host_veth, teardowns_pending
from lab.cli_helpers import metric_value
from lab.cluster import Cluster, wait_for
from lab.cni import invoke
from lab.namespaces import Namespace

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
SETTLE = 20.0


@pytest.fixture(scope="module")
def node(tmp_path_factory, installed):
    workdir = tmp_path_factory.mktemp("teardown")
    cluster = Cluster(workdir / "cluster", installed)
    try:
        cluster.set_network("weft", VXLAN)
        made = cluster.add_node()
        made.start_agent()
        made.wait_ready()
        wait_for(lambda: (made.status().get("policy") or {}).get("state") == "enforcing", SETTLE,
                 what=f"policy enforcing (log {made.log_path})")
        objects = workdir / "objects.yaml"
        objects.write_text(yaml.safe_dump_all([
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "deny", "namespace": "x"},
             "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}]))
        cluster.weftctl("apply", "-f", str(objects))
        wait_for(lambda: (made.status().get("policy") or {}).get("policies") == 1, SETTLE,
                 what="the policy enforced")
        yield made
    finally:
        cluster.cleanup()


def conf(node, **extra):
    return node.netconf(agentSocket=os.path.join(node.run_dir, "weftd.sock"), logLevel="debug", **extra)


def standalone_conf(node):
    return node.netconf(agentSocket=os.path.join(node.dir, "nobody-listens.sock"), logLevel="debug")


def call(node, command, pod, cfg, cid=None):
    cni = os.path.join(node.cluster.installed, "cni")
    return invoke(f"{cni}/weft", command, cfg, container_id=cid or pod.cid, netns=pod.ns.path, ifname=pod.ifname,
                  cni_path=cni, node=node.ns, args=f"K8S_POD_NAMESPACE=x;K8S_POD_NAME={pod.ns.name}")


def links(node) -> dict:
    return {link["ifname"]: link for link in node.ns.ip_json("link", "show")}


def store(node) -> str:
    return os.path.join(node.ipam_dir, "weft")


def releases(node, ip: str) -> int:
    path = os.path.join(store(node), "history.jsonl")
    with open(path) as handle:
        return sum(1 for line in handle if f'"{ip}"' in line and '"release"' in line)


def records(node) -> list:
    return teardowns_pending(os.path.join(node.dir, "weft"))


def in_policy_sets(node, ip: str) -> bool:
    out = node.ns.run(["nft", "-j", "list", "table", "inet", "weft_policy_weft"])
    for item in json.loads(out.stdout)["nftables"]:
        elements = item.get("set", {}).get("elem", [])
        if ip in [e if isinstance(e, str) else json.dumps(e) for e in elements]:
            return True
    return False


CT_COUNT = """
import sys
from pyroute2.conntrack import Conntrack, NFCTAttrTuple
ip = sys.argv[1]
with Conntrack() as ct:
    print(sum(1 for e in ct.dump_entries() if ip in (e.tuple_orig.saddr, e.tuple_orig.daddr,
                                                      e.tuple_reply.saddr, e.tuple_reply.daddr)))
"""


def conntrack_entries(node, ip: str) -> int:
    out = node.ns.run([sys.executable, "-c", CT_COUNT, ip])
    return int(out.stdout.strip())


@contextmanager
def records_lock(node):
    """The port records' lock (source validation): the teardown's first step waits for it."""
    path = ports.directory_beside(node.subnet_file(), "weft")
    os.makedirs(path, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def pending_metric(node) -> float:
    _, metrics = node.http("/metrics")
    return metric_value(metrics, "weft_teardown_pending")


def add(node, name, cfg):
    pod = node.add_pod(conf=cfg, name=name, pod_namespace="x")
    wait_for(lambda: in_policy_sets(node, pod.ip), SETTLE, what=f"{pod.ip} in the policy sets")
    return pod


def gateway(pod) -> str:
    return pod.result["ips"][0]["gateway"]


def test_del_cuts_off_first_and_releases_last(node):
    pod = add(node, "order", conf(node))
    assert pod.ping(gateway(pod))  # the node's masquerade table keeps conntrack on: an entry now
    assert conntrack_entries(node, pod.ip) > 0
    veth = host_veth(pod.cid)
    with holding(os.path.join(store(node), "lock")):  # the release waits
        out = node.delete_pod(pod, conf=conf(node))
        assert out.code == 0, out
        # the caller's part is done: the pod is cut off, the attachment gone from weft's view
        assert veth not in links(node)
        assert not any(link.get("master") == "cbr0" and name.startswith("wfx") for name, link in links(node).items())
        assert not pod.ping(gateway(pod), wait=1)
        # the background part runs up to the release, which waits for the store's lock
        wait_for(lambda: not in_policy_sets(node, pod.ip), SETTLE, what="the address out of the policy sets")
        wait_for(lambda: conntrack_entries(node, pod.ip) == 0, SETTLE, what="its conntrack entries flushed")
        wait_for(lambda: not any(name.startswith("wfx") for name in links(node)), SETTLE,
                 what="the retired veth deleted")
        assert os.path.exists(os.path.join(store(node), pod.ip)) and releases(node, pod.ip) == 0
        assert pending_metric(node) == 1
    wait_for(lambda: not records(node), SETTLE, what="the teardown finished")
    assert pending_metric(node) == 0
    assert not os.path.exists(os.path.join(store(node), pod.ip)) and releases(node, pod.ip) == 1
    steps = [e for e in node.plugin_log() if e["command"] == "DEL" and e.get("containerID") == pod.cid]
    assert "cut-off" in steps[0]["steps"] and steps[-1].get("teardown") == "finished"
    pod.ns.delete()


def test_add_of_the_same_attachment_right_after_del(node):
    pod = add(node, "again", conf(node))
    with holding(os.path.join(store(node), "lock")):
        assert node.delete_pod(pod, conf=conf(node)).code == 0
        done = {}
        again = threading.Thread(target=lambda: done.update(out=call(node, "ADD", pod, conf(node))))
        again.start()
        again.join(0.5)  # it waits: the release of the old addresses comes first
        assert "out" not in done
    again.join(30)
    out = done["out"]
    assert out.code == 0, out
    assert links(node)[host_veth(pod.cid)]["master"] == "cbr0" and not records(node)
    assert releases(node, pod.ip) == 1
    new_ip = out.json["ips"][0]["address"].split("/")[0]
    assert pod.ping(out.json["ips"][0]["gateway"])
    assert call(node, "DEL", pod, conf(node)).code == 0
    wait_for(lambda: not records(node), SETTLE, what="the teardown finished")
    assert not os.path.exists(os.path.join(store(node), new_ip))
    pod.ns.delete()


def test_another_attachment_in_the_same_namespace_right_after_del(node):
    pod = add(node, "reuse", conf(node))
    retired = "wfx" + host_veth(pod.cid)[3:]
    assert node.delete_pod(pod, conf=conf(node)).code == 0
    # the old attachment's lock, taken as a call would (weftd's teardown starts after 50 ms
    # without calls, so it waits for it): the old pair stays while another attachment comes
    with holding(os.path.join(node.dir, "weft", "locks", host_veth(pod.cid))):
        inside = {link["ifname"] for link in pod.ns.ip_json("link", "show")}
        assert "eth0" not in inside and retired in inside  # the pod's end renamed too: eth0 is free
        out = call(node, "ADD", pod, conf(node), cid=pod.cid + "-next")
        assert out.code == 0, out
        assert retired in {link["ifname"] for link in pod.ns.ip_json("link", "show")}
    assert pod.ping(out.json["ips"][0]["gateway"])
    assert call(node, "DEL", pod, conf(node), cid=pod.cid + "-next").code == 0
    wait_for(lambda: not records(node), SETTLE, what="the teardowns finished")
    assert {link["ifname"] for link in pod.ns.ip_json("link", "show")} == {"lo"}
    pod.ns.delete()


def test_del_idempotent_and_check_and_gc_agree(node):
    pod = add(node, "idem", conf(node))
    keep = add(node, "keep", conf(node))
    veth, retired = host_veth(pod.cid), "wfx" + host_veth(pod.cid)[3:]
    gc_conf = conf(node, cniVersion="1.1.0",
                   **{"cni.dev/valid-attachments": [{"containerID": keep.cid, "ifname": "eth0"}]})
    done = {}
    gc = threading.Thread(target=lambda: done.update(out=invoke(
        f"{node.cluster.installed}/cni/weft", "GC", gc_conf, cni_path=f"{node.cluster.installed}/cni", node=node.ns)))
    with records_lock(node):  # the teardown cannot start: the retired veth stays
        assert node.delete_pod(pod, conf=conf(node)).code == 0
        assert retired in links(node) and veth not in links(node)
        # DEL again while the teardown waits: the same answer at once (its lock is not waited for)
        assert node.delete_pod(pod, conf=conf(node)).code == 0 and retired in links(node)
        gc.start()
        gc.join(1.0)  # GC waits for the teardown in flight: it never sweeps it as debris
        assert "out" not in done and retired in links(node)
    gc.join(30)
    assert done["out"].code == 0, done["out"]
    assert not records(node) and retired not in links(node) and releases(node, pod.ip) == 1
    assert links(node)[host_veth(keep.cid)]["master"] == "cbr0"
    assert os.path.exists(os.path.join(store(node), keep.ip))
    # DEL again: same answer, nothing released twice; CHECK: the attachment is gone
    assert node.delete_pod(pod, conf=conf(node)).code == 0 and releases(node, pod.ip) == 1
    assert call(node, "CHECK", pod, conf(node, prevResult=pod.result)).code != 0
    assert node.delete_pod(keep, conf=conf(node)).code == 0
    wait_for(lambda: not records(node), SETTLE, what="the teardown finished")
    pod.ns.delete()
    keep.ns.delete()


def test_teardown_interrupted_by_agent_kill_is_finished_at_next_start(node):
    pod = add(node, "killed", conf(node))
    retired = "wfx" + host_veth(pod.cid)[3:]
    with records_lock(node):
        assert node.delete_pod(pod, conf=conf(node)).code == 0
        assert retired in links(node)
        node.stop_agent(sig=9)
    assert records(node) == [host_veth(pod.cid)] and retired in links(node)
    assert os.path.exists(os.path.join(store(node), pod.ip))
    # while nobody finishes it, the address is given to nobody else (weft-ipam standalone)
    network = pod.result["ips"][0]["address"]
    ipam_conf = {"cniVersion": "1.0.0", "name": "weft", "type": "weft",
                 "agentSocket": os.path.join(node.dir, "nobody-listens.sock"),
                 "ipam": {"type": "weft-ipam", "dataDir": node.ipam_dir,
                          "ranges": [[{"subnet": str(ipaddress.ip_interface(network).network)}]]}}
    cni = os.path.join(node.cluster.installed, "cni")
    taken = invoke(f"{cni}/weft-ipam", "ADD", ipam_conf, container_id="thief", ifname="eth0", cni_path=cni,
                   netns=pod.ns.path,
                   node=node.ns, args=f"IP={pod.ip}")
    assert taken.code == 1 and taken.json["code"] == 101 and pod.ip in taken.json["msg"], taken
    node.start_agent()
    node.wait_ready()
    wait_for(lambda: not records(node), SETTLE, what=f"the restarted agent finishing the teardown ({node.log_path})")
    assert retired not in links(node) and releases(node, pod.ip) == 1
    assert not os.path.exists(os.path.join(store(node), pod.ip))
    pod.ns.delete()


def test_standalone_del_is_synchronous(node):
    pod = add(node, "alone", conf(node))  # (a standalone ADD is refused: the node enforces a policy)
    out = node.delete_pod(pod, conf=standalone_conf(node))
    assert out.code == 0, out
    assert host_veth(pod.cid) not in links(node) and not any(n.startswith("wfx") for n in links(node))
    assert not records(node) and releases(node, pod.ip) == 1
    entry = [e for e in node.plugin_log() if e["command"] == "DEL" and e.get("containerID") == pod.cid][-1]
    assert entry["via"] == "standalone" and "cut-off" not in entry["steps"]
    pod.ns.delete()
