"""The README's demo command, run as written, non-interactively."""

import json
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def netns_names():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_make_demo(tmp_path, family):
    variables = [] if family == "ipv4" else [f"DEMO_FAMILY={family}"]  # as the docs write each
    proc = subprocess.run(["make", "-s", "-C", REPO, "demo", *variables], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    made = last.pop("namespaces")
    assert last == {"demo": "cluster", "family": family, "nodes": 3, "pods": 6, "result": "ok"}
    assert len(made) == 1 + 3 + 6
    assert "cross-node ping matrix" in proc.stdout and "FAILED" not in proc.stdout
    assert proc.stdout.count(" ok") == 6 * 5
    assert all(f"node{i}" in proc.stdout for i in (1, 2, 3))
    assert "network weft on node node1: ready" in proc.stdout
    assert f"node1-pod0 (ping {'10.244.' if family == 'ipv4' else 'fd10:244:'}" in proc.stdout
    assert "before the policy: allowed" in proc.stdout
    if family == "ipv6":  # leases keyed by IPv6 subnets; no IPv4 pod address anywhere
        assert "weft         fd10:244:" in proc.stdout and "10.244." not in proc.stdout
    assert "node3-pod0 -> default/node1-pod0 after the policy: denied" in proc.stdout
    assert "(app=web) -> default/node1-pod0 after the policy: allowed" in proc.stdout
    assert "DENIED: default/node3-pod0" in proc.stdout and "isolated by default/db-from-web" in proc.stdout
    # FlowLog on: the flow records of both TCP connections to the db pod (docs/flows.md)
    pods = "10.244." if family == "ipv4" else "fd10:244:"
    with_port = pods if family == "ipv4" else f"[{pods}"  # an IPv6 endpoint with a port: [address]:port
    assert f"default/node2-pod0 ({with_port}" in proc.stdout and "ALLOWED by default/db-from-web" in proc.stdout
    assert f"default/node3-pod0 ({pods}" in proc.stdout and "DENIED by default/db-from-web" in proc.stdout  # no sport
    # the worked example: node3-pod0's denied flow found from its name
    found = proc.stdout.split("--pod default/node3-pod0 --verdict denied\n", 1)[1].split("$ weftctl", 1)[0]
    assert "node1 tcp default/node3-pod0" in found and "DENIED by default/db-from-web" in found, found
    assert "ALLOWED" not in found, found
    assert not set(made) & netns_names(), "the demo left namespaces behind"
