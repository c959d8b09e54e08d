"""Three containerized nodes installed as the DaemonSet installs Kubernetes nodes.

tests/deploy/docker-compose.yml (driven by pytest-docker) starts etcd, and per node an
init container running `weft-install` (weft into the node's /opt/cni/bin and /opt/weft,
the conflist into its /etc/cni/net.d), the node itself (a container with no Python) and
weftd in the node's network namespace with only the DaemonSet's capabilities.  Pods are
network namespaces inside the node containers, attached by running the node's
/etc/cni/net.d conflist (weft, then portmap) as a runtime does.  Pods on different nodes
ping each other.

Images are built locally (tests/deploy/images.py, cached by content hash).  Docker adds
a bridge for the compose network (internal: no gateway, no NAT) to the root namespace;
nothing else of this test lives outside the containers, and compose removes it all.
"""

import ipaddress
import json
import os
import shutil
import subprocess
import time

import pytest

from lab.namespaces import suffix

from . import images

HERE = os.path.dirname(os.path.abspath(__file__))
NODES = ("node1", "node2", "node3")
CNI_PATH = "/opt/cni/bin:/usr/lib/cni"
READY_TIMEOUT = 90
CONFLISTS = {}  # node -> its /etc/cni/net.d conflist, read once


def docker(*args, check=True, timeout=120, **kwargs):
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} failed: {proc.stderr.strip()} {proc.stdout.strip()}")
    return proc


@pytest.fixture(scope="session")
def docker_engine():
    if shutil.which("docker") is None or docker("info", check=False, timeout=30).returncode != 0:
        pytest.fail("no Docker engine answers `docker info`; make test starts one "
                    "(dockerd --exec-opt native.cgroupdriver=cgroupfs --bridge=none --iptables=false)")


@pytest.fixture(scope="session")
def docker_compose_command():
    return "docker-compose" if shutil.which("docker-compose") else "docker compose"


@pytest.fixture(scope="session")
def docker_compose_file():
    return os.path.join(HERE, "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name():
    return f"weft{suffix()}"


@pytest.fixture(scope="session")
def docker_setup():
    return []  # `up` runs inside compose_cluster, so `down` runs even when `up` fails half-way


@pytest.fixture(scope="session")
def docker_cleanup():
    return ["down -v -t 5"]


def _free_underlay() -> str:
    """A 172.30.X.0/24 no route of this machine (docker networks included) overlaps."""
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True,
                            text=True).stdout
    used = []
    for line in routes.splitlines():
        try:
            used.append(ipaddress.ip_network(line.split()[0] if line.split()[0] != "local"
                                             else line.split()[1], strict=False))
        except (ValueError, IndexError):
            continue
    for third in [int(suffix(2), 16) % 200 + 20 for _ in range(50)]:
        candidate = ipaddress.ip_network(f"172.30.{third}.0/24")
        if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
            return f"172.30.{third}"
    raise RuntimeError("no free 172.30.X.0/24 for the compose network")


@pytest.fixture(scope="session")
def built_images(docker_engine):
    started = time.monotonic()
    built = images.build_all()
    print(f"images ready in {time.monotonic() - started:.1f}s: {built}")
    return built


@pytest.fixture(scope="session")
def compose_env(built_images, tmp_path_factory):
    """Per-node host directories and the shared /run/netns directories."""
    root = tmp_path_factory.mktemp("nodes")
    netns = root / "netns"
    for node in NODES:
        (root / "nodes" / node / "opt" / "cni" / "bin").mkdir(parents=True)
        (netns / node).mkdir(parents=True)
    # a node's pod namespaces (bind mounts in /run/netns) must reach its weftd container:
    # the directory is a shared mount of its own, removed (with anything left on it) below
    subprocess.run(["mount", "--bind", str(netns), str(netns)], check=True)
    subprocess.run(["mount", "--make-rshared", str(netns)], check=True)
    env = {"WEFT_IMAGE": built_images["weft"], "WEFT_NODE_IMAGE": built_images["node"],
           "WEFT_UNDERLAY": _free_underlay(), "WEFT_NODES_DIR": str(root / "nodes"),
           "WEFT_NETNS_DIR": str(netns)}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        subprocess.run(["umount", "--recursive", "--lazy", str(netns)], check=False)


class Cluster:
    def __init__(self, services, project):
        self.compose = services._docker_compose
        self.project = project

    def container(self, service: str) -> str:
        out = self.compose.execute(f"ps -q {service}").decode().strip()
        assert out, f"no container for {service}"
        return out.splitlines()[0]

    def exec(self, service, *args, env=None, stdin=None, check=True, timeout=60):
        flags = ["-i"] if stdin is not None else []
        for key, value in (env or {}).items():
            flags += ["-e", f"{key}={value}"]
        return docker("exec", *flags, self.container(service), *args, input=stdin, check=check,
                      timeout=timeout)

    def logs(self, service) -> str:
        return docker("logs", self.container(service), check=False).stderr[-4000:]


@pytest.fixture(scope="session")
def cluster(compose_env, docker_services, docker_compose_project_name):
    cluster = Cluster(docker_services, docker_compose_project_name)
    started = time.monotonic()
    cluster.compose.execute("up -d")
    deadline = time.monotonic() + READY_TIMEOUT
    for node in NODES:
        weftd = "weftd" + node[-1]
        while cluster.exec(weftd, "weftctl", "status", check=False).returncode != 0:
            assert time.monotonic() < deadline, f"{weftd} not ready:\n{cluster.logs(weftd)}"
            time.sleep(0.5)
    print(f"compose cluster ready in {time.monotonic() - started:.1f}s")
    yield cluster


def conflist(cluster, node) -> dict:
    return json.loads(cluster.exec(node, "cat", "/etc/cni/net.d/10-weft.conflist").stdout)


def run_chain(cluster, node, command, pod, cid, prev=None):
    """libcni's order: ADD/CHECK through the list threading prevResult, DEL in reverse."""
    conf = CONFLISTS.get(node) or CONFLISTS.setdefault(node, conflist(cluster, node))
    entries = conf["plugins"] if command != "DEL" else list(reversed(conf["plugins"]))
    result = prev
    for entry in entries:
        netconf = {**entry, "cniVersion": conf["cniVersion"], "name": conf["name"]}
        if result is not None:
            netconf["prevResult"] = result
        exe = f"/opt/cni/bin/{entry['type']}" if entry["type"].startswith("weft") else \
            f"/usr/lib/cni/{entry['type']}"
        out = cluster.exec(node, exe, stdin=json.dumps(netconf), check=False, env={
            "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod}",
            "CNI_IFNAME": "eth0", "CNI_PATH": CNI_PATH,
            "CNI_ARGS": f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"})
        assert out.returncode == 0, f"{command} {entry['type']} on {node}: {out.stdout} {out.stderr}"
        if command == "ADD":
            result = json.loads(out.stdout)
    return result


def test_install_is_what_the_daemonset_does(cluster):
    for node in NODES:
        listing = cluster.exec(node, "ls", "/opt/cni/bin").stdout.split()
        assert {"weft", "weft-ipam"} <= set(listing)
        assert cluster.exec(node, "readlink", "/opt/weft").stdout.startswith("weft-releases/")
        # the node has no Python of its own: the plugin runs on the copied runtime
        assert cluster.exec(node, "sh", "-c", "command -v python3", check=False).returncode != 0
        version = cluster.exec(node, "/opt/cni/bin/weft", stdin='{"cniVersion": "1.1.0"}',
                               env={"CNI_COMMAND": "VERSION"})
        assert "1.1.0" in json.loads(version.stdout)["supportedVersions"]
        assert conflist(cluster, node)["plugins"][0]["type"] == "weft"
    # a restarted init container (same image) changes nothing
    again = cluster.compose.execute("run --rm -T install1").decode()
    assert "copied release" not in again and "wrote" not in again, again
    # the conflist's cniVersion, chosen in the container by the image's weftctl asking the
    # node's plugins: portmap is not in the node's /opt/cni/bin (it runs from /usr/lib/cni)
    assert ("cniVersion 1.0.0 for /host/etc/cni/net.d/10-weft.conflist: not 1.1.0, held back by: "
            "portmap (/host/opt/cni/bin) is not an executable file in /host/opt/cni/bin") in again, again
    assert conflist(cluster, "node1")["cniVersion"] == "1.0.0"


def test_pods_on_different_nodes_ping_each_other(cluster):
    pods = []
    try:
        for node in NODES:
            pod = f"pod-{suffix()}"
            cluster.exec(node, "ip", "netns", "add", pod)
            pods.append((node, pod, f"{node}-{pod}", None))
            result = run_chain(cluster, node, "ADD", pod, f"{node}-{pod}")
            pods[-1] = (node, pod, f"{node}-{pod}", result)
        addresses = {pod: result["ips"][0]["address"].split("/")[0] for _, pod, _, result in pods}
        subnets = {ipaddress.ip_interface(result["ips"][0]["address"]).network for *_, result in pods}
        assert len(subnets) == 3, "each node leased its own subnet"
        for node, pod, _, _ in pods:
            for _, other, _, _ in pods:
                if other == pod:
                    continue
                for _ in range(3):  # the first packet may wait for neighbour resolution
                    ping = cluster.exec(node, "ip", "netns", "exec", pod, "ping", "-c", "1", "-W", "2",
                                        addresses[other], check=False)
                    if ping.returncode == 0:
                        break
                assert ping.returncode == 0, f"{pod}@{node} -> {other}: {ping.stdout}"
        for node, pod, cid, result in pods:
            run_chain(cluster, node, "CHECK", pod, cid, prev=result)
    finally:
        for node, pod, cid, result in pods:
            if result is not None:
                run_chain(cluster, node, "DEL", pod, cid)
            cluster.exec(node, "ip", "netns", "del", pod, check=False)


def test_weftd_probes_answer_on_the_metrics_port(cluster):
    probe = ("import urllib.request as u; "
             "print(*(u.urlopen('http://127.0.0.1:9465' + p, timeout=5).status for p in ('/healthz', '/readyz')))")
    for node in NODES:
        out = cluster.exec("weftd" + node[-1], "/opt/weft/venv/bin/python", "-c", probe)
        assert out.stdout.split() == ["200", "200"]
