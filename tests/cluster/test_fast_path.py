"""The CNI fast path: `weft`/`weft-ipam` hand calls to the node's weftd over its socket."""

import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from lab.cli_helpers import metric_value
from lab.cni import invoke
from lab.namespaces import Namespace

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}


def one_node(cluster):
    cluster.set_network("weft", VXLAN)
    node = cluster.add_node()
    node.start_agent()
    node.wait_ready()
    return node


def fast_conf(node, **extra):
    return node.netconf(agentSocket=os.path.join(node.run_dir, "weftd.sock"), **extra)


def log_entries(node):
    return node.plugin_log()


def test_socket_is_root_only_and_calls_go_through_the_agent(cluster):
    node = one_node(cluster)
    sock = os.path.join(node.run_dir, "weftd.sock")
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    pod = node.add_pod(conf=fast_conf(node))
    assert pod.ip.startswith("10.244.")
    assert node.ns.ip_json("link", "show", "master", "cbr0")
    assert node.delete_pod(pod, conf=fast_conf(node)).code == 0
    vias = [(e["command"], e["via"]) for e in log_entries(node)]
    assert vias == [("ADD", "agent"), ("DEL", "agent")]
    _, metrics = node.http("/metrics")
    assert metric_value(metrics, 'weft_cni_request_seconds_count{command="ADD",exit="0",role="weft"}') == 1
    # weft's IPAM ran inside the agent too: no weft-ipam call reached the socket
    assert 'role="weft-ipam"' not in metrics


def test_agent_and_standalone_serve_one_node_at_once(cluster):
    node = one_node(cluster)
    standalone = node.netconf(agentSocket=os.path.join(node.dir, "no-agent-here.sock"))
    work = [(i, fast_conf(node) if i % 2 else standalone) for i in range(24)]
    namespaces = [Namespace("wpf") for _ in work]
    try:
        def add(item):
            i, conf = item
            return invoke(f"{cluster.installed}/cni/weft", "ADD", conf, container_id=f"mix{i}",
                          netns=namespaces[i].path, ifname="eth0", cni_path=f"{cluster.installed}/cni",
                          node=node.ns)

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(add, work))
        assert [r.code for r in results] == [0] * len(work), [str(r) for r in results if r.code][:2]
        addresses = {r.json["ips"][0]["address"] for r in results}
        assert len(addresses) == len(work)
        vias = [e["via"] for e in log_entries(node) if e["command"] == "ADD"]
        assert vias.count("agent") == 12 and vias.count("standalone") == 12
    finally:
        for ns in namespaces:
            ns.delete()


def test_reference_bridge_reaches_weft_ipam_in_the_agent(cluster):
    node = one_node(cluster)
    pod_ns = Namespace("wpf")
    try:
        conf = {"cniVersion": "1.0.0", "name": "weft", "type": "bridge", "bridge": "refbr0",
                "agentSocket": os.path.join(node.run_dir, "weftd.sock"),
                "ipam": {"type": "weft-ipam", "dataDir": node.ipam_dir,
                         "ranges": [[{"subnet": "10.99.0.0/24"}]]}}
        cni_path = f"{cluster.installed}/cni:/usr/lib/cni"
        out = invoke("/usr/lib/cni/bridge", "ADD", conf, container_id="ref1", netns=pod_ns.path,
                     ifname="eth0", cni_path=cni_path, node=node.ns)
        assert out.code == 0, out
        assert out.json["ips"][0]["address"] == "10.99.0.2/24"
        _, metrics = node.http("/metrics")
        assert metric_value(metrics, 'weft_cni_request_seconds_count{command="ADD",exit="0",role="weft-ipam"}') == 1
        assert invoke("/usr/lib/cni/bridge", "DEL", conf, container_id="ref1", netns=pod_ns.path,
                      ifname="eth0", cni_path=cni_path, node=node.ns).code == 0
        assert not [f for f in os.listdir(os.path.join(node.ipam_dir, "weft")) if f.startswith("10.")]
    finally:
        pod_ns.delete()


def test_dead_agent_falls_back_to_standalone(cluster):
    node = one_node(cluster)
    node.agent.kill()  # SIGKILL: the socket file stays behind, nobody listens
    node.agent.wait()
    assert os.path.exists(os.path.join(node.run_dir, "weftd.sock"))
    pod = node.add_pod(conf=fast_conf(node))
    assert pod.ip.startswith("10.244.")
    assert log_entries(node)[-1]["via"] == "standalone"


def test_agent_that_does_not_answer_nor_abandon_is_error_5(cluster, tmp_path):
    """11 would tell the runtime "retry, nothing happened"; a peer that never answers,
    not even after the forwarder hung up its sending half, may still be working."""
    node = one_node(cluster)
    silent = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(silent))
    listener.listen(4)
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    pod_ns = Namespace("wpf")
    try:
        out = invoke(f"{cluster.installed}/cni/weft", "ADD", node.netconf(agentSocket=str(silent)),
                     container_id="slow1", netns=pod_ns.path, ifname="eth0",
                     cni_path=f"{cluster.installed}/cni", extra_env={"WEFT_AGENT_TIMEOUT": "1"})
        assert out.code == 1 and out.json["code"] == 5, out
        assert "did not answer within 1s nor confirm abandoning" in out.json["msg"], out
        assert str(silent) in out.json["msg"] and "DEL the attachment" in out.json["msg"], out
        assert out.json["cniVersion"] == "1.0.0"
    finally:
        pod_ns.delete()
        listener.close()
