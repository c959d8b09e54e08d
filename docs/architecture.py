#!/usr/bin/env python3
"""Source of docs/architecture.svg, the README's architecture picture.

Drawn by weft's own renderer (cni_plugin/cli/graph.py, the one behind `weftctl graph`):
a three-node cluster with two networks, what runs on each node, the subnet leases and
VTEPs weftd programs, pods, and etcd on the underlay.  Regenerate after editing:

    .venv/bin/python docs/architecture.py            # writes docs/architecture.svg
    .venv/bin/python docs/architecture.py --check    # exit 1 if the SVG is stale

tests/deploy/test_docs.py fails when the committed SVG differs from what this produces.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from cni_plugin.cli.graph import render  # noqa: E402

SVG = os.path.join(HERE, "architecture.svg")

COMPONENTS = ["kubelet / containerd", "Multus (optional)", "weft -> weft-ipam", "weftd",
              "/run/weft/<net>.env", "/var/lib/cni/networks"]


def node(index: int, pods: list, secondary: list) -> dict:
    vtep = f"02:5e:{index:02x}:00:00:01"
    leases = [{"network": "weft", "subnet": f"10.244.{index}.0/24", "vtepMAC": vtep, "vni": 1,
               "device": "weft.1 (cbr0)"}]
    all_pods = [{"name": name, "ip": f"10.244.{index}.{host}", "network": "weft", "ifname": "eth0"}
                for name, host in pods]
    if secondary:
        leases.append({"network": "weft2", "subnet": f"10.245.{index}.0/24",
                       "vtepMAC": f"02:5e:{index:02x}:00:00:02", "vni": 2, "device": "weft.2 (cbr1)"})
        all_pods += [{"name": name, "ip": f"10.245.{index}.{host}", "network": "weft2", "ifname": "net1"}
                     for name, host in secondary]
    return {"name": f"node{index}", "publicIP": f"192.168.56.{10 + index}",
            "components": COMPONENTS, "leases": leases, "pods": all_pods}


MODEL = {
    "title": "weft: one bridge per network per node, a subnet lease per node in etcd, VXLAN between nodes",
    "etcd": "/weft/networks/<net>/config, subnets/<subnet>, history/<node>/",
    "networks": [
        {"name": "weft", "network": "10.244.0.0/16", "backend": "vxlan", "vni": 1},
        {"name": "weft2", "network": "10.245.0.0/16", "backend": "vxlan", "vni": 2},
    ],
    "nodes": [
        node(1, [("default/web-0", 2), ("kube-system/coredns", 3)], [("default/web-0", 2)]),
        node(2, [("default/web-1", 2), ("default/db-0", 3)], [("default/web-1", 2)]),
        node(3, [("default/web-2", 2)], []),
    ],
    "notes": [
        "kubelet/containerd runs /opt/cni/bin/weft (conflist in /etc/cni/net.d); weft hands the call to weftd's "
        "socket when it listens, else runs it itself.",
        "weft builds the bridge and the pod's veth, asks weft-ipam for an address from the node's subnet "
        "(read from the subnet file weftd writes).",
        "weftd leases the node's subnet in etcd, builds weft.<VNI>, and per remote lease programs "
        "neighbour, FDB entry and route (dashed: VXLAN).",
    ],
}


def main(argv) -> int:
    text = render(MODEL)
    if "--check" in argv:
        with open(SVG) as handle:
            return 0 if handle.read() == text else 1
    with open(SVG, "w") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
