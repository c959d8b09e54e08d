"""Pods on different nodes reach each other over the overlay (real etcd, real agents)."""

import itertools

import pytest

from lab.cluster import wait_for

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}


def start(cluster, count, config=VXLAN, pods_per_node=1):
    cluster.set_network("weft", config)
    nodes = [cluster.add_node() for _ in range(count)]
    for node in nodes:
        node.start_agent()
    for node in nodes:
        node.wait_ready()
    # every agent has programmed every other lease
    for node in nodes:
        wait_for(lambda: len(node.status()["peers"]) == count - 1, 20, what=f"{node.name} peers")
    pods = [node.add_pod() for node in nodes for _ in range(pods_per_node)]
    return nodes, pods


def test_two_nodes_vxlan(cluster):
    nodes, pods = start(cluster, 2)
    a, b = pods
    assert a.ping(b.ip) and b.ping(a.ip)
    link = nodes[0].ns.ip_json("-d", "link", "show", "weft.1")[0]
    assert link["linkinfo"]["info_data"]["id"] == 1 and link["mtu"] == 1450
    leases = cluster.weftctl("leases", "weft").stdout
    assert "node1" in leases and "node2" in leases
