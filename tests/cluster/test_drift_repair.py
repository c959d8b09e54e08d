"""Drift repair on a settled node: every kind of entry weft owns comes back.

"Settled": each controller's first full read is done and at least one quiet pass
followed it (the status file's kernelReads).  Then an entry is removed by hand with
the tools an operator would use (`wg`, `bridge`, `ip`, `nft`); it must be back by the
end of the first pass that began after the removal (read from the controller's pass
counter, not from the clock), and counted in weft_drift_repaired_total.  The agents
run with --resync-interval 3600, so the periodic full read cannot be what repaired
it; the resync itself is checked on a change the notifications do not report (routes
flushed with the underlay link)."""

import json

from lab.cli_helpers import metric_value
from lab.cluster import wait_for

VXLAN = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}
WIREGUARD = {"Network": "10.246.0.0/16", "Backend": {"Type": "wireguard"}}
WG_DEV = "weft-wg.51820"
SERIES = 'weft_drift_repaired_total{network="weft"}'


def start(cluster, count, config, resync="3600"):
    cluster.set_network("weft", config)
    nodes = [cluster.add_node() for _ in range(count)]
    for node in nodes:
        node.start_agent(extra=["--resync-interval", resync])
    for node in nodes:
        node.wait_ready()
    for node in nodes:
        wait_for(lambda: len(node.status()["peers"]) == count - 1, 20, what=f"{node.name} meshed")
    return nodes


def reads(node, controller) -> dict:
    status = node.status() or {}
    section = status if controller == "overlay" else (status.get(controller) or {})
    return section.get("kernelReads") or {}


def passes(node, controller) -> int:
    counts = reads(node, controller)
    return counts.get("full", 0) + counts.get("unnotified", 0) + counts.get("skipped", 0)


def settle(node, controller):
    wait_for(lambda: reads(node, controller).get("full", 0) >= 1
             and reads(node, controller).get("quietSinceFull", 0) >= 1, 30,
             what=f"{node.name}'s {controller} settled (a full read, then a quiet pass)")


def drift(node) -> float:
    return metric_value(node.http("/metrics")[1], SERIES)


def removed_and_restored(node, controller, what, remove, present):
    """Remove an entry on a settled node; it must be back when the controller's second
    pass after the removal has begun (the first one that started after it has ended)."""
    settle(node, controller)
    counted, before = drift(node), passes(node, controller)
    remove()
    assert not present(), f"{what}: still there after removing it by hand"
    wait_for(lambda: passes(node, controller) >= before + 2, 30,
             what=f"two {controller} passes on {node.name} after removing {what}")
    assert present(), f"{what} was not restored by the first {controller} pass after its removal"
    assert reads(node, controller).get("lastFullWhy") != "resync"
    wait_for(lambda: drift(node) > counted, 10, what=f"{what}: repair counted in {SERIES}")


def _nft_json(node, *args):
    out = node.ns.run(["nft", "-j", "list", *args], check=False)
    return json.loads(out.stdout)["nftables"] if out.returncode == 0 else None


def test_vxlan_fdb_neighbour_route_masquerade_and_policy_come_back(cluster):
    one, two = start(cluster, 2, VXLAN)
    lease = two.status()["lease"]
    subnet, mac, vtep = lease["subnet"], lease["vtepMAC"], lease["subnet"].split("/")[0]

    def fdb():
        entries = json.loads(one.ns.run(["bridge", "-j", "fdb", "show", "dev", "weft.1"]).stdout or "[]")
        return any(e.get("mac") == mac and e.get("dst") == two.ip for e in entries)

    removed_and_restored(one, "overlay", "the FDB entry of node2's VTEP",
                         lambda: one.ns.run(["bridge", "fdb", "del", mac, "dev", "weft.1", "dst", two.ip, "self"]),
                         fdb)
    removed_and_restored(one, "overlay", "the neighbour of node2's VTEP",
                         lambda: one.ns.run(["ip", "neigh", "del", vtep, "dev", "weft.1"]),
                         lambda: any(n.get("lladdr") == mac for n in one.ns.ip_json("neigh", "show", "dev", "weft.1")))
    removed_and_restored(one, "overlay", "the route to node2's subnet",
                         lambda: one.ns.run(["ip", "route", "del", subnet, "proto", "119"]),
                         lambda: any(r["dst"] == subnet for r in one.ns.ip_json("route", "show", "proto", "119")))

    def masquerade_rules():
        return [i["rule"] for i in _nft_json(one, "table", "inet", "weft_weft") or [] if "rule" in i]
    wanted = len(masquerade_rules())

    def remove_rule():
        handle = masquerade_rules()[0]["handle"]
        one.ns.run(["nft", "delete", "rule", "inet", "weft_weft", "postrouting", "handle", str(handle)])
    removed_and_restored(one, "masquerade", "the IPv4 masquerade rule", remove_rule,
                         lambda: len(masquerade_rules()) == wanted)

    chain = ("chain", "inet", "weft_policy_weft", "ingress_hook")
    wait_for(lambda: _nft_json(one, *chain) is not None, 30, what="the policy table's ingress chain")
    removed_and_restored(one, "policy", "the policy table's ingress chain",
                         lambda: one.ns.run(["nft", "delete", *chain]),
                         lambda: _nft_json(one, *chain) is not None)
    assert "reconcile repaired" in one.log()


def test_wireguard_peer_and_route_come_back_on_a_settled_node(cluster):
    one, two = start(cluster, 2, WIREGUARD)
    key, subnet = two.status()["wireguard"]["publicKey"], two.status()["lease"]["subnet"]

    def peer():
        endpoints = dict(line.split("\t") for line in one.wg("show", WG_DEV, "endpoints").splitlines())
        return endpoints.get(key) == f"{two.ip}:51820"

    removed_and_restored(one, "overlay", "node2's WireGuard peer",
                         lambda: one.wg("set", WG_DEV, "peer", key, "remove"), peer)
    # a peer is read on every pass, notified or not: no full read was needed
    assert reads(one, "overlay")["unnotified"] >= 1
    one.wg("set", WG_DEV, "peer", key, "endpoint", f"{two.ip}:1")  # pointed elsewhere by hand
    before = passes(one, "overlay")
    wait_for(lambda: passes(one, "overlay") >= before + 2, 30, what="two passes after the endpoint change")
    assert peer(), "a peer's endpoint changed by hand was not put back"
    removed_and_restored(one, "overlay", "the route to node2's subnet",
                         lambda: one.ns.run(["ip", "route", "del", subnet, "proto", "119"]),
                         lambda: any(r["dst"] == subnet for r in one.ns.ip_json("route", "show", "proto", "119")))


def test_the_resync_repairs_what_no_notification_reported(cluster):
    """VXLAN DirectRouting sends a same-network peer's subnet through the underlay; an
    underlay link flap flushes that route with no route notification (and the link
    change is not the device's): only the periodic full read can notice it."""
    one, two = start(cluster, 2, {**VXLAN, "Backend": {**VXLAN["Backend"], "DirectRouting": True}}, resync="4")
    subnet = two.status()["lease"]["subnet"]

    def route():
        return any(r["dst"] == subnet and r.get("gateway") == two.ip
                   for r in one.ns.ip_json("route", "show", "proto", "119"))
    wait_for(route, 20, what="node1's direct route to node2")
    settle(one, "overlay")
    counted = drift(one)
    one.ns.run(["ip", "link", "set", "eth0", "down"])
    one.ns.run(["ip", "link", "set", "eth0", "up"])
    assert not route(), "the underlay flap did not flush the direct route: the test proves nothing"
    wait_for(route, 30, what="the resync putting the direct route back")
    wait_for(lambda: drift(one) > counted, 10, what=f"the repair counted in {SERIES}")
    repaired = [json.loads(line) for line in one.log().splitlines() if "reconcile repaired" in line]
    assert any("full read: resync" in entry["msg"] for entry in repaired), repaired[-3:]
