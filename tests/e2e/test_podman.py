"""A real runtime: podman (libcni, the library containerd uses) runs busybox
containers on a CNI network inside a node namespace.

The same checks run for weft (weft + weft-ipam) and for the reference chain
(bridge + host-local), so a harness problem shows in both and a weft problem in one.
"""

import os
import re
import shutil
import tempfile

import pytest

import podman_harness as H

REF_PLUGINS = "/usr/lib/cni"
SUBNET, GATEWAY = "10.88.77.0/24", "10.88.77.1"   # exists only in the node ns
IP_FILE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")      # one file per allocated address


@pytest.fixture
def root_links_unchanged():
    before = H.root_links()
    yield
    assert H.root_links() == before, "root netns link list changed"


@pytest.fixture
def node_netns(root_links_unchanged):
    name = H.make_netns("weft-e2e")
    try:
        yield name
    finally:
        H.delete_netns(name)
        assert not H.netns_exists(name)


@pytest.fixture
def work_dir():
    d = tempfile.mkdtemp(prefix="weft-e2e-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def weft_conflist(suffix, work):
    return {
        "cniVersion": "1.0.0",  # podman 4.3's libcni cannot read 1.1.0 results
        "name": f"weft-e2e-{suffix}",
        "plugins": [{
            "type": "weft",
            "bridge": f"wbr{suffix}",
            "dataDir": f"{work}/weft",
            "logFile": f"{work}/weft.log",
            "ipam": {"type": "weft-ipam", "dataDir": f"{work}/ipam",
                     "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]]},
        }],
    }


def reference_conflist(suffix, work):
    return {
        "cniVersion": "1.0.0",
        "name": f"weft-ref-{suffix}",
        "plugins": [{
            "type": "bridge",
            "bridge": f"wrefbr{suffix}",
            "isGateway": True,
            "ipam": {"type": "host-local", "dataDir": f"{work}/ipam",
                     "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                     "routes": [{"dst": "0.0.0.0/0"}]},
        }],
    }


FLAVOURS = {
    # name: (conflist builder, host veth prefix)
    "weft": (weft_conflist, "wft"),
    "reference": (reference_conflist, "veth"),
}


@pytest.fixture(params=sorted(FLAVOURS))
def flavour(request):
    return request.param


@pytest.fixture
def podman_env(flavour, node_netns, work_dir, installed):
    for tool in ("podman", "runc", "nsenter", "unshare"):
        assert shutil.which(tool), f"{tool} is missing: run `make deps`"
    build, _ = FLAVOURS[flavour]
    conf = build(H.rand_suffix(), work_dir)
    env = H.PodmanEnv(node_netns, [f"{installed}/cni", REF_PLUGINS], conf)
    try:
        yield env
    finally:
        env.cleanup()


def allocated(work, network):
    d = os.path.join(work, "ipam", network)
    if not os.path.isdir(d):
        return set()
    return {f for f in os.listdir(d) if IP_FILE.match(f)}


def test_two_containers_ping_and_release(flavour, podman_env, work_dir, node_netns):
    env = podman_env
    bridge = env.conflist["plugins"][0]["bridge"]
    _, veth_prefix = FLAVOURS[flavour]

    env.run("c1")
    env.run("c2")
    ip1, ip2 = env.ip_of("c1"), env.ip_of("c2")
    sandboxes = [env.inspect(c)["NetworkSettings"]["SandboxKey"] for c in ("c1", "c2")]
    assert all(os.path.exists(s) for s in sandboxes)   # /run/netns/netns-*
    assert ip1 != ip2
    assert all(ip.startswith("10.88.77.") for ip in (ip1, ip2))
    assert allocated(work_dir, env.network) == {ip1, ip2}

    # the address inside the container is the one podman reports
    out = env.exec("c1", ["ip", "-4", "-o", "addr", "show", "eth0"]).stdout
    assert f"inet {ip1}/24" in out

    # bridge + two host veths live in the node netns (not in the root one)
    links = H.netns_links(node_netns)
    assert bridge in links
    assert len([name for name in links if name.startswith(veth_prefix)]) == 2

    for src, dst in (("c1", ip2), ("c2", ip1), ("c1", GATEWAY), ("c2", GATEWAY)):
        r = env.exec(src, ["ping", "-c", "1", "-W", "2", dst], check=False, timeout=15)
        assert r.returncode == 0, f"{src} -> {dst}: {r.stdout}{r.stderr}"

    env.rm("c1")
    env.rm("c2")
    assert allocated(work_dir, env.network) == set(), "IPs not released"
    assert H.netns_links(node_netns) == {"lo", bridge}   # veths gone
    assert not any(os.path.exists(s) for s in sandboxes)
    assert env.podman("ps", "-aq").stdout.strip() == ""
