"""Kubernetes mode (`weftd --policy-source kubernetes`), a contract test: no API server
can run here, so lab.kube_standin serves recorded list and watch responses
(tests/cluster/data/kube_recorded.json: paged lists, ADDED/MODIFIED/DELETED/BOOKMARK
events, then a 410 "too old resource version"), and the test checks what the source
asks (paths, resourceVersion, bookmarks, bearer token) and what it delivers; then a
real weftd enforces the recorded policies on real pods."""

import json
import os
import subprocess
import sys

import pytest

from cni_plugin.agent.kube_source import KubeSource
from cni_plugin.policy.state import PolicyState
from cni_plugin.subnet.registry import RegistryError
from lab.cluster import ETCD_IP, REPO, wait_for
from lab.kube_standin import StandIn

RECORDED = os.path.join(os.path.dirname(__file__), "data", "kube_recorded.json")
POLICIES = "/apis/networking.k8s.io/v1/networkpolicies"
TOKEN = "recorded-serviceaccount-token"


def _serviceaccount(tmp_path, token=TOKEN):
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(token + "\n")
    return str(sa)


@pytest.fixture
def standin():
    with open(RECORDED) as handle:
        served = StandIn("127.0.0.1", 0, json.load(handle), TOKEN).start()
    yield served
    served.stop()


def test_lists_pages_and_follows_the_watch_to_a_resync(tmp_path, standin):
    source = KubeSource(f"http://127.0.0.1:{standin.port}", _serviceaccount(tmp_path))
    rows, generation = source.list_policy_objects()
    assert sorted(k for k, _ in rows) == ["Namespace/x", "Namespace/y", "NetworkPolicy/x/deny-a", "Pod/x/a", "Pod/y/b"]
    state = PolicyState()
    state.load_objects(rows, generation)
    assert not state.rejected and state.pod("y", "b").label_map == {"pod": "b"}
    assert [p.ref for p in state.policies] == ["x/deny-a"]
    assert {"path": "/api/v1/pods", "query": {"limit": "500", "continue": "1"}} in standin.seen
    events = []
    cancel = source.watch_policy_objects(generation + 1, lambda *e: events.append(e))
    try:
        wait_for(lambda: any(e[0] == "resync" for e in events), 30, what="a resync after the recorded 410")
    finally:
        cancel()
    changes = [(kind, key) for kind, key, _, _ in events if kind != "resync"]
    assert changes == [("put", "NetworkPolicy/y/from-x"), ("put", "NetworkPolicy/x/deny-a"),
                       ("delete", "NetworkPolicy/y/from-x")]
    assert "too old resource version" in next(e[2] for e in events if e[0] == "resync")
    watches = [s["query"] for s in standin.seen if s["path"] == POLICIES and s["query"].get("watch") == "1"]
    assert watches[0]["resourceVersion"] == "1002" and watches[0]["allowWatchBookmarks"] == "true"
    assert watches[1]["resourceVersion"] == "1013"  # the stream ended: reopened from the last event
    for kind, key, text, counter in events[:3]:
        state.put_object(key, text, counter) if kind == "put" else state.delete_object(key, counter)
    assert not state.rejected and [p.ref for p in state.policies] == ["x/deny-a"]
    assert state.generation > generation


def test_a_refused_serviceaccount_names_rbac(tmp_path, standin):
    source = KubeSource(f"http://127.0.0.1:{standin.port}", _serviceaccount(tmp_path, "wrong"))
    with pytest.raises(RegistryError, match=r"HTTP 403 \(RBAC: .*get/list/watch"):
        source.list_policy_objects()


def test_no_server_outside_a_pod_says_what_to_pass(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(RegistryError, match="--kube-api-server"):
        KubeSource(None)


def test_agent_enforces_policies_from_the_api(cluster, tmp_path):
    """weftd lists the recorded objects: x/deny-a isolates x/a (in the end it admits only
    pods labelled c of x), so y/b cannot reach x/a while x/a reaches y/b."""
    cluster.set_network("weft", {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}})
    server = subprocess.Popen(["ip", "netns", "exec", cluster.underlay.name, sys.executable, "-m",
                               "lab.kube_standin", ETCD_IP, "0", RECORDED, TOKEN], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    try:
        port = json.loads(server.stdout.readline())["listening"]
        node = cluster.add_node()
        node.start_agent(extra=["--policy-source", "kubernetes", "--kube-api-server", f"http://{ETCD_IP}:{port}",
                                "--kube-serviceaccount-dir", _serviceaccount(tmp_path)])
        node.wait_ready()
        wait_for(lambda: (node.status().get("policy") or {}).get("policies") == 1, 30,
                 what=f"{node.name} programming the API's policies (log {node.log_path})")
        assert node.status()["policy"]["source"] == "kubernetes"
        conf = node.netconf(agentSocket=os.path.join(node.run_dir, "weftd.sock"))
        a = node.add_pod(conf=conf, name="a", pod_namespace="x")
        b = node.add_pod(conf=conf, name="b", pod_namespace="y")
        servers = [subprocess.Popen(["ip", "netns", "exec", p.ns.name, sys.executable, "-m", "lab.netpol_probe",
                                     "serve", p.ip, "80"], stdout=subprocess.PIPE, text=True, cwd=REPO)
                   for p in (a, b)]
        try:
            for s in servers:
                assert s.stdout.readline().strip() == "listening"

            def reach(src, dst):
                out = src.ns.run([sys.executable, "-m", "lab.netpol_probe", "ask", "1", f"{dst.ip}/TCP/80"],
                                 cwd=REPO).stdout
                return json.loads(out)[0]

            assert reach(a, b) is True
            assert reach(b, a) is False, "y/b reached x/a, which x/deny-a isolates"
        finally:
            for s in servers:
                s.kill()
                s.wait()
    finally:
        server.kill()
        server.wait()
