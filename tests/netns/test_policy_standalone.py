"""No policy gap while weftd is away: a standalone ADD on a node that enforces
NetworkPolicy for the network is refused (code 11) and leaves nothing behind."""

import pytest

pytestmark = pytest.mark.root

TABLE = "weft_policy_weftnet"


def test_standalone_add_is_refused_while_the_node_enforces_policy(weft, node, pods):
    pod = pods()
    node.run(["nft", "add", "table", "inet", TABLE])
    node.run(["nft", "add", "chain", "inet", TABLE, "egress"])
    empty = weft("ADD", weft.conf(), pod, cid="c0")  # a table without policies isolates nobody
    assert empty.code == 0, str(empty)
    assert weft("DEL", weft.conf(), pod, cid="c0").code == 0
    node.run(["nft", "add", "chain", "inet", TABLE, "p1_in"])  # one policy's chain
    try:
        out = weft("ADD", weft.conf(), pod)
        assert out.code == 1 and out.json["code"] == 11, str(out)
        assert f"table inet {TABLE}" in out.json["msg"] and "start weftd" in out.json["msg"]
        assert node.ip_json("link", "show", "type", "veth") == []
        assert [link["ifname"] for link in pod.ip_json("link", "show")] == ["lo"]
        assert weft.ipam_files() == []
    finally:
        node.run(["nft", "delete", "table", "inet", TABLE])
    again = weft("ADD", weft.conf(), pod)
    assert again.code == 0, str(again)
    assert weft("DEL", weft.conf(), pod).code == 0
