"""The hand decoders of etcd answers read what protobuf's own runtime reads (pure logic:
messages encoded by etcd3's generated classes, no etcd)."""

import pytest

from cni_plugin.subnet import etcd_transport as t
from cni_plugin.subnet.registry import RegistryError

rpc = t.etcdrpc


def _range_answer(rows, revision=4242, more=False) -> bytes:
    response = rpc.RangeResponse(header=rpc.ResponseHeader(cluster_id=7, member_id=9, revision=revision,
                                                           raft_term=3), more=more, count=len(rows))
    for key, value, lease, created in rows:
        response.kvs.add(key=key, value=value, lease=lease, create_revision=created, mod_revision=created + 5,
                         version=2)
    return response.SerializeToString()


def test_a_range_page_decodes_as_protobuf_does():
    rows = [(f"/coreos.com/network/weft/subnets/10.{i // 256}.{i % 256}.0-24".encode(),
             ('{"PublicIP": "172.16.0.%d", "x": "%s"}' % (i % 250, "é" * (i % 300))).encode(),
             (1 << 62) + i if i % 3 else 0, 10 + i * 1000)
            for i in range(700)]
    rows.append((b"/k", b"", 0, 0))  # an empty value and nothing else set
    page, revision, more = t._range_page(_range_answer(rows, more=True))
    parsed = rpc.RangeResponse.FromString(_range_answer(rows, more=True))
    assert page == [(kv.key, kv.value, kv.lease, kv.create_revision) for kv in parsed.kvs] == rows
    assert (revision, more) == (4242, True)
    assert t._range_page(_range_answer([], revision=1)) == ([], 1, False)


def test_a_ttl_answer_and_a_broken_answer():
    answer = rpc.LeaseTimeToLiveResponse(header=rpc.ResponseHeader(revision=5), ID=77, TTL=-1,
                                         grantedTTL=60).SerializeToString()
    assert t._ttl_of(answer) == -1
    assert t._ttl_of(rpc.LeaseTimeToLiveResponse(ID=1, TTL=3599).SerializeToString()) == 3599
    with pytest.raises(RegistryError, match="truncated"):
        t._range_page(_range_answer([(b"/key", b"value", 1, 2)])[:-3])
