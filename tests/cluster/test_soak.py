"""Fault-injection soak of the per-pod path (issue 13, item 7): lab/soak.py, bounded.

Two nodes with real etcd and weftd; ADD/DEL/CHECK/GC with kill -9 of the plugin and of
the agents, etcd paused, a full and a read-only dataDir; then weftd's open descriptors
counted before and after a last round of calls.  The bound comes from
WEFT_SOAK_SECONDS / WEFT_SOAK_OPS (`make soak` raises both); the figures are printed
and written to soak-results/last.json.
"""

import json
import os

from lab.cluster import Cluster
from lab.soak import Soak

SECONDS = float(os.environ.get("WEFT_SOAK_SECONDS", "45"))
OPS = int(os.environ.get("WEFT_SOAK_OPS", "1500"))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_soak_leaves_no_leak_and_never_holds_an_ip_twice(tmp_path, installed):
    cluster = Cluster(tmp_path / "cluster", installed, reconcile_interval=1.0)
    soak = Soak(cluster, SECONDS, OPS)
    try:
        soak.setup()
        report = soak.run()
    finally:
        soak.cleanup()
        cluster.cleanup()
    os.makedirs(os.path.join(REPO, "soak-results"), exist_ok=True)
    with open(os.path.join(REPO, "soak-results", "last.json"), "w") as handle:
        json.dump(report, handle, indent=2)
    print(json.dumps(report, indent=2))
    assert report["operations"] >= 50, report  # the soak really ran
    for kind in ("plugin kill", "agent kill", "etcd pause", "full disk", "read-only"):
        assert report["by_fault"].get(kind), f"no {kind} was injected: {report}"
    assert report["history records audited"] >= report["by_operation"].get("ADD", 0) // 2, report
    assert report["problems"] == [], report
    assert all(not found for found in report["leaks"].values()), report["leaks"]
    # every descriptor weftd received (the pods' namespaces) was closed: the counts match
    # but for one nftables socket per CNI worker thread started during the round
    descriptors = report["weftd descriptors"]
    assert len(descriptors) == 2, descriptors
    for counts in descriptors.values():
        assert counts["kept"] == [] and counts["namespaces held"] == 0, descriptors
        assert counts["before"] <= counts["after"] <= counts["before"] + counts["new threads"], descriptors
