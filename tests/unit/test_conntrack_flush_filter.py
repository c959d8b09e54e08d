"""flush()'s own check of each dumped entry (datapath/conntrack.holds): a kernel
before 5.8 ignores the dump's address filter and hands back every entry, so the
entries another address holds must never be deleted."""

import ipaddress

from cni_plugin.datapath import nlcodec as nl
from cni_plugin.datapath.conntrack import holds

POD, OTHER, SERVICE = (ipaddress.ip_address(a) for a in ("10.244.1.5", "10.244.1.6", "10.96.0.10"))


def entry(orig_src, orig_dst, reply_src, reply_dst):
    return nl.Conntrack("update", 2, 1, nl.Tuple(orig_src, orig_dst, 6, 40000, 80),
                        nl.Tuple(reply_src, reply_dst, 6, 80, 40000), 0, 0, None, None, None, None)


def test_an_entry_the_pod_opened_is_its_own():
    assert holds(entry(POD, OTHER, OTHER, POD), POD)


def test_an_entry_dnatted_to_the_pod_is_its_own():  # a Service address in the original tuple
    assert holds(entry(OTHER, SERVICE, POD, OTHER), POD)


def test_another_pods_entry_is_not_deleted():
    assert not holds(entry(OTHER, SERVICE, ipaddress.ip_address("10.244.2.9"), OTHER), POD)


def test_an_entry_without_a_reply_tuple():
    assert holds(entry(POD, OTHER, OTHER, POD)._replace(reply=None), POD)
    assert not holds(entry(OTHER, POD, POD, OTHER)._replace(reply=None), POD)
