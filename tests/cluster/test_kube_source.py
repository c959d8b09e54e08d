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
import threading
import time

import pytest

from cni_plugin.agent import kube_source
from cni_plugin.agent.kube_source import KubeSource
from cni_plugin.policy.state import PolicyState
from cni_plugin.subnet.registry import RegistryError
from lab.cluster import ETCD_IP, REPO, wait_for
from lab.kube_standin import StandIn, self_signed

RECORDED = os.path.join(os.path.dirname(__file__), "data", "kube_recorded.json")
POLICIES = "/apis/networking.k8s.io/v1/networkpolicies"
PODS, NAMESPACES = "/api/v1/pods", "/api/v1/namespaces"
TOKEN = "recorded-serviceaccount-token"


def _serviceaccount(tmp_path, token=TOKEN):
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(token + "\n")
    return str(sa)


def _recorded() -> dict:
    with open(RECORDED) as handle:
        return json.load(handle)


@pytest.fixture
def standin():
    served = StandIn("127.0.0.1", 0, _recorded(), TOKEN).start()
    yield served
    served.stop()


@pytest.fixture
def standins():
    """StandIn(**options) with the recorded lists; each one stopped afterwards."""
    made = []

    def make(watches=None, **options):
        recording = _recorded()
        recording["watches"] = watches or {}
        made.append(StandIn("127.0.0.1", 0, recording, TOKEN, **options).start())
        return made[-1]

    yield make
    for served in made:
        served.stop()


def _watch_threads() -> list:
    return [t.name for t in threading.enumerate() if t.name.startswith(kube_source.THREAD_PREFIX) and t.is_alive()]


class _Seen:
    """What a KubeSource reports: its events, counted errors and logged warnings."""

    def __init__(self):
        self.events, self.errors, self.warnings = [], [], []

    def watch(self, served: StandIn, tmp_path) -> tuple:
        """A source on the stand-in, listed, its watch started: (source, cancel)."""
        source = KubeSource(f"http://127.0.0.1:{served.port}", _serviceaccount(tmp_path), errors=self.errors.append,
                            warn=self.warnings.append)
        _, generation = source.list_policy_objects()
        return source, source.watch_policy_objects(generation + 1, lambda *e: self.events.append(e))


def test_lists_pages_and_follows_the_watch_to_a_resync(tmp_path, standin):
    source = KubeSource(f"http://127.0.0.1:{standin.port}", _serviceaccount(tmp_path))
    rows, generation = source.list_policy_objects()
    assert sorted(k for k, _ in rows) == ["Namespace/x", "Namespace/y", "NetworkPolicy/x/deny-a", "Pod/x/a", "Pod/y/b"]
    state = PolicyState()
    state.load_objects(rows, generation)
    assert not state.rejected and state.pod("y", "b").label_map == {"pod": "b"}
    assert [p.ref for p in state.policies] == ["x/deny-a"]
    assert {"path": "/api/v1/pods", "query": {"limit": "500", "continue": "1"}} in [
        {"path": r["path"], "query": r["query"]} for r in standin.seen]
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


@pytest.mark.parametrize("answer", [[1, 2], {"items": "x"}, {"items": [3]}, {"items": [], "metadata": "x"}])
def test_a_list_of_another_shape_is_a_registry_error_naming_the_path(tmp_path, answer):
    recording = _recorded()
    recording["objects"] = {PODS: json.dumps(answer)}  # valid JSON, not a Kubernetes list
    served = StandIn("127.0.0.1", 0, recording, TOKEN).start()
    try:
        source = KubeSource(f"http://127.0.0.1:{served.port}", _serviceaccount(tmp_path))
        with pytest.raises(RegistryError, match="/api/v1/pods is not a Kubernetes list object"):
            source.list_policy_objects()
    finally:
        served.stop()


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


def test_stop_interrupts_the_blocking_reads_and_ends_every_watch_thread(tmp_path, standins):
    """The stand-in holds all three watches open and sends nothing: cancel() must cut the
    reads (not wait for WATCH_SECONDS), and no watch thread may outlive it."""
    served = standins(idle="hold")
    source = KubeSource(f"http://127.0.0.1:{served.port}", _serviceaccount(tmp_path))
    _, generation = source.list_policy_objects()
    events = []
    cancel = source.watch_policy_objects(generation + 1, lambda *e: events.append(e))
    wait_for(lambda: served.holding == 3, 30, what="three watch streams held open by the stand-in")
    assert len(_watch_threads()) == 3
    began = time.monotonic()
    cancel()
    took = time.monotonic() - began
    assert _watch_threads() == [], "a watch thread outlived cancel()"
    assert took < kube_source.STOP_SECONDS, f"cancel() waited out its bound ({took:.1f} s): a read was not cut"
    assert events == []  # a cancelled watch reports nothing, not even a resync
    source.stop()  # the source-wide stop has nothing left to do, and says so quickly
    assert _watch_threads() == []


def test_stop_cuts_a_held_https_watch_too(tmp_path, standins):
    """The same over TLS (the path weftd takes in a cluster): shutting the socket down
    ends the read inside the TLS layer as well."""
    sa = _serviceaccount(tmp_path)
    certfile, keyfile = self_signed(sa)
    served = standins(idle="hold", tls=(certfile, keyfile))
    source = KubeSource(f"https://127.0.0.1:{served.port}", sa)
    _, generation = source.list_policy_objects()
    cancel = source.watch_policy_objects(generation + 1, lambda *e: None)
    wait_for(lambda: served.holding == 3, 30, what="three TLS watch streams held open")
    began = time.monotonic()
    cancel()
    assert _watch_threads() == [] and time.monotonic() - began < kube_source.STOP_SECONDS


def _policy(name: str, version: int, kind="ADDED") -> dict:
    return {"type": kind, "object": {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                      "metadata": {"namespace": "x", "name": name, "resourceVersion": str(version)},
                                      "spec": {"podSelector": {}}}}


def test_unparsable_lines_are_counted_logged_once_and_skipped(tmp_path, standins):
    stream = [_policy("p1", 1010), "{not json", "{not json", '["a", "list"]', {"type": "ADDED"},
              {"object": {"metadata": {}}}, {"type": "MODIFIED", "object": {"metadata": "flat"}},
              _policy("p2", 1011), "{not json either"]
    served = standins(watches={POLICIES: [stream]}, idle="hold")
    seen = _Seen()
    source, cancel = seen.watch(served, tmp_path)
    try:
        wait_for(lambda: len(served.watches(POLICIES)) >= 2, 30, what="the watch reopened after the stream")
    finally:
        cancel()
    assert [(kind, key) for kind, key, _, _ in seen.events] == [("put", "NetworkPolicy/x/p1"),
                                                                ("put", "NetworkPolicy/x/p2")]
    assert seen.errors == ["unparsable"] * 7 and source.problems() == {"unparsable": 7}
    problems = sorted(w.split("(", 1)[1].split(")", 1)[0] for w in seen.warnings)
    assert problems == ["no object", "no type", "not JSON", "not a JSON object", "object.metadata is not an object"]
    assert all(w.startswith("Kubernetes watch of NetworkPolicy: skipped a line") for w in seen.warnings)
    assert "'{not json'" in " ".join(seen.warnings)  # the first line of each problem is quoted
    # the watch went on: the next request starts from the last good line's version
    assert served.watches(POLICIES)[1]["query"]["resourceVersion"] == "1011"
    assert source.versions["NetworkPolicy"] == "1011"


def test_a_failing_server_is_retried_from_the_last_version_with_growing_delays(tmp_path, standins, monkeypatch):
    """Every watch request fails (HTTP 500): the attempts on one path come at gaps that
    double from RETRY_FIRST up to a cap (lowered here to keep the test short), each within
    the jitter of its nominal value (the lower bounds are exact; the upper ones allow for
    a busy machine).  The failure is logged once per kind but counted every time; once
    the server answers again the watch resumes from the listing's version, and after a
    stream that served, the next outage is logged again."""
    monkeypatch.setattr(kube_source, "RETRY_MOST", 0.8)
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "1003"}}}
    served = standins(watches={POLICIES: [[bookmark]]}, watch_status=500)
    seen = _Seen()
    source, cancel = seen.watch(served, tmp_path)
    try:
        wait_for(lambda: len(served.watches(POLICIES)) >= 8, 60, what="eight failed watch attempts")
        assert len(seen.warnings) == 3
        served.watch_status = None
        wait_for(lambda: source.versions["NetworkPolicy"] == "1003", 30, what="a watch after the server recovered")
        served.watch_status = 500
        wait_for(lambda: len(seen.warnings) == 4, 30, what="the second outage logged")
    finally:
        cancel()
    at = [s["at"] for s in served.watches(POLICIES)[:8]]
    gaps = [b - a for a, b in zip(at, at[1:])]
    nominal = [min(kube_source.RETRY_FIRST * 2 ** i, 0.8) for i in range(len(gaps))]  # .1 .2 .4 .8 .8 .8 .8
    low, high = 1 - kube_source.RETRY_JITTER, 1 + kube_source.RETRY_JITTER
    # the lower bounds alone show the growth: the fourth gap is at least 0.64 s, over five
    # times the most the first may be without a busy machine in the way
    for gap, want in zip(gaps, nominal):
        assert want * low - 0.01 <= gap <= want * high + 1.0, (gaps, nominal)  # uncapped, gap 6 would be 6.4 s
    versions = [s["query"]["resourceVersion"] for s in served.watches(POLICIES)]
    assert versions[:9] == ["1002"] * 9 and set(versions) == {"1002", "1003"}
    assert seen.events == []  # a bookmark moves the version on and delivers nothing
    assert seen.errors.count("stream") >= 3 * 7 and set(seen.errors) == {"stream"}
    assert all("HTTP 500" in w for w in seen.warnings)
    assert sorted(w.split(" failed")[0] for w in seen.warnings[:3]) == [
        "Kubernetes watch of Namespace", "Kubernetes watch of NetworkPolicy", "Kubernetes watch of Pod"]
    assert seen.warnings[3].startswith("Kubernetes watch of NetworkPolicy failed, retrying from resourceVersion 1003")


def test_versions_stay_consistent_under_three_watch_threads(tmp_path, standins):
    """Three streams of interleaved events and bookmarks at once: every event is delivered
    once with its own counter, in counter order; each kind's version only moves forward
    (read under the lock while they run) and ends at its stream's last version."""
    def stream(kind: str, base: int) -> list:
        lines = []
        for i in range(1, 301):
            meta = {"name": f"o{i}", "resourceVersion": str(base + i)}
            if kind != "Namespace":
                meta["namespace"] = "x"
            lines.append({"type": "BOOKMARK" if i % 10 == 0 else "ADDED", "object": {"metadata": meta}})
        return lines

    streams = {NAMESPACES: stream("Namespace", 10000), PODS: stream("Pod", 20000),
               POLICIES: stream("NetworkPolicy", 30000)}
    served = standins(watches={path: [lines] for path, lines in streams.items()}, idle="hold")
    source = KubeSource(f"http://127.0.0.1:{served.port}", _serviceaccount(tmp_path))
    _, generation = source.list_policy_objects()
    events, snapshots, done = [], [], threading.Event()

    def read_versions():
        while not done.is_set():
            with source.lock:
                snapshots.append(dict(source.versions))
            time.sleep(0.001)

    reader = threading.Thread(target=read_versions)
    reader.start()
    cancel = source.watch_policy_objects(generation + 1, lambda *e: events.append(e))
    try:
        wait_for(lambda: served.holding == 3, 60, what="all three streams read to their end")
    finally:
        cancel()
        done.set()
        reader.join()
    counters = [e[3] for e in events]
    assert len(events) == 3 * 270 and counters == sorted(counters) and len(set(counters)) == len(counters)
    assert min(counters) > generation
    assert source.versions == {"Namespace": "10300", "Pod": "20300", "NetworkPolicy": "30300"}
    for kind in source.versions:
        seen = [int(s[kind]) for s in snapshots if kind in s]
        assert seen == sorted(seen), f"{kind}'s version went backwards"


def test_weftctl_status_shows_the_watch_problems(tmp_path, capsys):
    from cni_plugin import paths
    from cni_plugin.cli import weftctl
    from cni_plugin.subnet import status_file

    status_file.write(paths.status_file(str(tmp_path), "weft"), {
        "network": "weft", "node": "n1", "ready": True, "peers": [],
        "policy": {"source": "kubernetes", "generation": 9, "policies": 1, "localPods": 2, "rules": 4,
                   "table": "inet weft_policy_weft", "state": "enforcing",
                   "watchErrors": {"unparsable": 3, "stream": 12}}})
    assert weftctl.main(["status", "--run-dir", str(tmp_path)]) == 0
    assert "Kubernetes watch problems: 12 stream, 3 unparsable" in capsys.readouterr().out
