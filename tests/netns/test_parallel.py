"""50 attachments added and deleted at once through the executables."""

import os
from concurrent.futures import ThreadPoolExecutor

PARALLEL = 50


def test_fifty_parallel_adds_then_dels(weft, node, pods):
    conf = weft.conf(ipam={"type": "weft-ipam", "dataDir": f"{weft.tmp}/ipam",
                           "ranges": [[{"subnet": "10.244.0.0/16"}]]})
    namespaces = [pods() for _ in range(PARALLEL)]

    def add(i):
        return weft("ADD", conf, namespaces[i], cid=f"par{i}")

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        added = list(pool.map(add, range(PARALLEL)))
    failures = [str(out) for out in added if out.code != 0]
    assert not failures, failures[:3]
    addresses = [out.json["ips"][0]["address"] for out in added]
    assert len(set(addresses)) == PARALLEL
    assert len(weft.ipam_files()) == PARALLEL
    veths = [e for e in node.ip_json("link", "show", "master", "cbr0")]
    assert len(veths) == PARALLEL

    def delete(i):
        return weft("DEL", conf, namespaces[i], cid=f"par{i}")

    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        deleted = list(pool.map(delete, range(PARALLEL)))
    assert [out.code for out in deleted] == [0] * PARALLEL, [str(o) for o in deleted if o.code][:3]
    assert weft.ipam_files() == []
    store = f"{weft.tmp}/ipam/weftnet"
    leftovers = [name for name in os.listdir(store)
                 if name not in ("lock", "history.jsonl") and not name.startswith("last_reserved_ip")]
    assert leftovers in ([], ["by-attachment"]), leftovers
    if "by-attachment" in leftovers:
        assert os.listdir(f"{store}/by-attachment") == []
    assert node.ip_json("link", "show", "master", "cbr0") == []
