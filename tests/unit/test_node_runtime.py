"""The installer's look at its node's runtime (cli/node_runtime.py), against lab.kube_standin
serving Node objects on 127.0.0.1: what it asks, and every way the answer can be missing,
refused, slow, too big or wrong; the rule itself is tested in test_chain_version.py, the
installer with it in tests/e2e/test_install_conflist.py."""

import pytest

from cni_plugin.cli import node_runtime
from lab.kube_standin import StandIn

TOKEN = "installer-token"
NODE = "node-a.example"
PATH = f"/api/v1/nodes/{NODE}"


def node_object(runtime="containerd://2.1.9", name=NODE, **extra):
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "resourceVersion": "7"},
            "status": {"nodeInfo": {"containerRuntimeVersion": runtime, "kubeletVersion": "v1.34.1"}}, **extra}


@pytest.fixture
def env(monkeypatch):
    for name in ("NODE_NAME", "WEFT_CONTAINER_RUNTIME", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def standin():
    served = StandIn("127.0.0.1", 0, {}, TOKEN).start()
    yield served
    served.stop()


@pytest.fixture
def api(standin, tmp_path, env):
    """serve(objects) -> (the stand-in serving them, learn(**kwargs)), the ServiceAccount's
    token in place."""
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(TOKEN + "\n")
    server = f"http://127.0.0.1:{standin.port}"

    def serve(objects, token=TOKEN):
        standin.recording, standin.token = {"objects": objects}, token
        standin.seen.clear()

        def learn(runtime=None, node=NODE):
            return node_runtime.learn(runtime, node, server, str(sa))
        learn.server, learn.sa = server, str(sa)
        return standin, learn

    return serve


def test_the_node_objects_runtime_is_read_with_the_serviceaccount(api):
    served, learn = api({PATH: node_object()})
    verdict = learn()
    assert verdict.accepts and verdict.known
    assert verdict.reason.startswith(f"the runtime containerd://2.1.9 (node {NODE}'s containerRuntimeVersion) "
                                     "takes 1.1.0")
    assert [(s["path"], s["query"]) for s in served.seen] == [(PATH, {})]


def test_an_older_containerd_on_the_node_is_named(api):
    _, learn = api({PATH: node_object("containerd://1.7.13")})
    verdict = learn()
    assert not verdict.accepts and verdict.known
    assert f"containerd://1.7.13 (node {NODE}'s containerRuntimeVersion) is older than containerd 2.0.0" in \
        verdict.reason


def test_the_node_name_comes_from_the_environment(api, env):
    served, learn = api({PATH: node_object()})
    env.setenv("NODE_NAME", NODE)
    verdict = node_runtime.learn(None, None, learn.server, learn.sa)
    assert verdict.accepts and f"node {NODE}'s" in verdict.reason
    assert [s["path"] for s in served.seen] == [PATH]


def test_a_stated_runtime_wins_and_nothing_is_asked(api, env):
    served, learn = api({PATH: node_object("containerd://1.7.13")})
    verdict = learn(runtime="containerd://2.1.9")
    assert verdict.accepts and "(stated by --runtime)" in verdict.reason
    env.setenv("WEFT_CONTAINER_RUNTIME", "cri-o://1.30.2")
    verdict = learn()
    assert not verdict.accepts and "cri-o://1.30.2 (stated by WEFT_CONTAINER_RUNTIME) is older than CRI-O 1.31.0" \
        in verdict.reason
    assert served.seen == []


@pytest.mark.parametrize("value", ["containerd", "containerd 2.1.9", "2.1.9", "containerd://2.1"])
def test_a_stated_runtime_that_does_not_parse_is_refused(env, value):
    with pytest.raises(ValueError, match=r"^--runtime: .* is not a NAME://X.Y.Z runtime version"):
        node_runtime.stated(value)
    env.setenv("WEFT_CONTAINER_RUNTIME", value)
    with pytest.raises(ValueError, match=r"^WEFT_CONTAINER_RUNTIME: "):
        node_runtime.stated(None)
    env.delenv("WEFT_CONTAINER_RUNTIME")
    assert node_runtime.stated(None) == ("", "")


@pytest.mark.parametrize("name,problem", [
    ("", "no node name to look up ($NODE_NAME, or --node-name)"),
    ("../secrets", "node name '../secrets' is not a Kubernetes node name"),
    ("Node-A", "node name 'Node-A' is not a Kubernetes node name"),
    ("a/b", "node name 'a/b' is not a Kubernetes node name"),
    ("node-a?watch=1", "node name 'node-a?watch=1' is not a Kubernetes node name"),
    ("-a", "node name '-a' is not a Kubernetes node name"),
    ("a" * 254, "is not a Kubernetes node name"),
])
def test_a_missing_or_malformed_node_name_asks_nothing(api, name, problem):
    served, learn = api({PATH: node_object()})
    verdict = learn(node=name)
    assert not verdict.accepts and not verdict.known
    assert verdict.reason.startswith("the runtime could not be confirmed: ") and problem in verdict.reason
    assert served.seen == []


def test_no_api_server_outside_a_pod_is_said(env, tmp_path):
    verdict = node_runtime.learn(None, NODE, None, str(tmp_path))
    assert not verdict.known
    assert verdict.reason == ("the runtime could not be confirmed: reading node node-a.example: no Kubernetes API "
                              "server: $KUBERNETES_SERVICE_HOST is unset (not in a pod?); pass --kube-api-server URL")


def test_a_refused_serviceaccount_names_the_rbac_it_needs(api):
    _, learn = api({PATH: node_object()}, token="another")
    verdict = learn()
    assert not verdict.known and "HTTP 403 (RBAC: the install-cni container's ServiceAccount needs get on nodes, " \
        "see conf/kubernetes/04-rbac.yaml)" in verdict.reason


def test_an_unknown_node_is_said(api):
    _, learn = api({})
    verdict = learn()
    assert not verdict.known and f"reading node {NODE}: Kubernetes API" in verdict.reason
    assert f"{PATH}: HTTP 404" in verdict.reason


@pytest.mark.parametrize("answer,problem", [
    ("{not json", "not JSON"),
    ("[]", "the API's answer is not a JSON object"),
    ("[" * 100000 + "]" * 100000, "not JSON"),
    ({"kind": "Pod", "metadata": {"name": NODE}}, "the API answered with a 'Pod', not a Node"),
    (node_object(name="node-b"), f"the API's answer is not node {NODE}'s object"),
    ({"kind": "Node", "metadata": {"name": NODE}}, f"node {NODE} has no status.nodeInfo.containerRuntimeVersion"),
    ({"kind": "Node", "metadata": {"name": NODE}, "status": {"nodeInfo": []}}, "has no status.nodeInfo"),
    (node_object(runtime=""), "has no status.nodeInfo.containerRuntimeVersion"),
    (node_object(runtime=["containerd://2.1.9"]), "has no status.nodeInfo.containerRuntimeVersion"),
    (node_object(runtime="containerd://2.1.9-" + "x" * 200), "containerRuntimeVersion is longer than 128"),
    (node_object(runtime="containerd://2.1.9\x1b[2J"), "'containerd://2.1.9\\x1b[2J' (node node-a.example's "
                                                        "containerRuntimeVersion) is not a NAME://X.Y.Z"),
    (node_object(runtime="cri-dockerd://0.3.15"), "is a runtime weft does not know to take 1.1.0"),
])
def test_an_answer_that_is_not_a_node_with_a_runtime_is_not_trusted(api, answer, problem):
    _, learn = api({PATH: answer})
    verdict = learn()
    assert not verdict.accepts and not verdict.known, verdict
    assert verdict.reason.startswith("the runtime could not be confirmed: ") and problem in verdict.reason


def test_an_answer_bigger_than_the_bound_is_refused(api):
    padding = "x" * node_runtime.READ_LIMIT
    _, learn = api({PATH: node_object(padding=padding)})
    verdict = learn()
    assert not verdict.known and f"answer longer than {node_runtime.READ_LIMIT} bytes" in verdict.reason


def test_a_server_that_never_answers_is_given_up(api, monkeypatch):
    monkeypatch.setattr(node_runtime, "READ_SECONDS", 0.5)
    served, learn = api({PATH: None})
    verdict = learn()
    assert not verdict.known and f"reading node {NODE}: Kubernetes API" in verdict.reason
    assert "timed out" in verdict.reason, verdict.reason
    assert served.seen and served.seen[0]["path"] == PATH


def test_a_server_that_trickles_is_given_up(api, monkeypatch):
    monkeypatch.setattr(node_runtime, "READ_SECONDS", 0.5)
    text = f'{{"kind": "Node", "metadata": {{"name": "{NODE}"}}, "status": {{}}}}'
    _, learn = api({PATH: [text[:1], *text[1:]]})  # one character every DRIP_SECONDS
    verdict = learn()
    assert not verdict.known and f"reading node {NODE}: Kubernetes API" in verdict.reason
    assert "no complete answer within the time allowed" in verdict.reason or "timed out" in verdict.reason, \
        verdict.reason
