"""Fuzz tests of the ctnetlink decoder (datapath/nlcodec.py decode_conntrack, used by
datapath/conntrack.py for flow records).

A well-formed entry built here from random values (with foreign attributes between the
ones weft reads) decodes to exactly those values, and pyroute2's own ctnetlink decoder
reads the same bytes the same way (a tuple or counters nest of the kernel's usual
layout is read in one unpack, any other by the general reader: both are drawn, and
checked to agree); random bytes, a cut-short entry and an entry with
bytes overwritten end in MalformedMessage or a result, never another exception.  The
delete request of an entry kept raw names that entry's original tuple.
"""

import ipaddress
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni_plugin.datapath import nlcodec as nl
from cni_plugin.datapath.constants import AF_INET, AF_INET6

BOUNDED = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
BE16, BE32, BE64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")


def _tuple_attr(kind, family, src, dst, proto, sport, dport, foreign=b""):
    """foreign: an attribute put after the ports (the kernel's usual layout read in one
    unpack without it, the general path with it)."""
    v4 = family == AF_INET
    ip = nl.attr(nl.CTA_IP_V4_SRC if v4 else nl.CTA_IP_V6_SRC, src.packed) + \
        nl.attr(nl.CTA_IP_V4_DST if v4 else nl.CTA_IP_V6_DST, dst.packed)
    ports = nl.attr(nl.CTA_PROTO_NUM, bytes([proto])) + nl.attr(nl.CTA_PROTO_SRC_PORT, BE16.pack(sport)) + \
        nl.attr(nl.CTA_PROTO_DST_PORT, BE16.pack(dport)) + foreign
    return nl.attr(kind | nl.NLA_F_NESTED, nl.attr(nl.CTA_TUPLE_IP | nl.NLA_F_NESTED, ip) +
                   nl.attr(nl.CTA_TUPLE_PROTO | nl.NLA_F_NESTED, ports))


def _counters(kind, packets, octets, foreign=b""):
    return nl.attr(kind | nl.NLA_F_NESTED, foreign + nl.attr(nl.CTA_COUNTERS_PACKETS, BE64.pack(packets)) +
                   nl.attr(nl.CTA_COUNTERS_BYTES, BE64.pack(octets)))


@st.composite
def entries(draw):
    version = draw(st.sampled_from((4, 6)))
    family = AF_INET if version == 4 else AF_INET6
    address = st.integers(0, 2 ** (32 if version == 4 else 128) - 1).map(ipaddress.ip_address if version == 4
                                                                          else ipaddress.IPv6Address)
    src, dst = draw(address), draw(address)
    proto = draw(st.sampled_from((6, 17, 132)))
    sport, dport = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    values = {"family": family, "src": src, "dst": dst, "proto": proto, "sport": sport, "dport": dport,
              "id": draw(st.integers(0, 2 ** 32 - 1)), "mark": draw(st.integers(0, 2 ** 32 - 1)),
              "orig": (draw(st.integers(0, 2 ** 40)), draw(st.integers(0, 2 ** 50))),
              "reply": (draw(st.integers(0, 2 ** 40)), draw(st.integers(0, 2 ** 50))),
              "start": draw(st.integers(0, 2 ** 63)), "stop": draw(st.integers(0, 2 ** 63)),
              "event": draw(st.sampled_from(("new", "update", "destroy")))}
    foreign = draw(st.sampled_from((b"", nl.attr(9, b"\0\0\0\0"))))  # both decoding paths
    attrs = [_tuple_attr(nl.CTA_TUPLE_ORIG, family, src, dst, proto, sport, dport, foreign),
             _tuple_attr(nl.CTA_TUPLE_REPLY, family, dst, src, proto, dport, sport),
             nl.attr(nl.CTA_MARK, BE32.pack(values["mark"])), nl.attr(nl.CTA_ID, BE32.pack(values["id"])),
             _counters(nl.CTA_COUNTERS_ORIG, *values["orig"], foreign=foreign),
             _counters(nl.CTA_COUNTERS_REPLY, *values["reply"]),
             nl.attr(nl.CTA_TIMESTAMP | nl.NLA_F_NESTED, nl.attr(nl.CTA_TIMESTAMP_START, BE64.pack(values["start"])) +
                     nl.attr(nl.CTA_TIMESTAMP_STOP, BE64.pack(values["stop"])))]
    for kind, value in draw(st.lists(st.tuples(st.integers(23, 40), st.binary(max_size=16)), max_size=3)):
        attrs.insert(draw(st.integers(0, len(attrs))), nl.attr(kind, value))
    msg = nl.IPCTNL_MSG_CT_DELETE if values["event"] == "destroy" else nl.IPCTNL_MSG_CT_NEW
    flags = nl.NLM_F_CREATE if values["event"] == "new" else 0
    data = nl.message(nl.ctnetlink_type(msg), flags, 0, nl.nfgenmsg(family) + b"".join(attrs))
    return data, values


def _decode(data):
    out = []
    for offset, length, kind, flags, _ in nl.messages(data):
        out.append(nl.decode_conntrack(data, offset, length, kind, flags))
    return out


@BOUNDED
@given(entries())
def test_a_well_formed_entry_decodes_to_what_it_holds(built):
    data, v = built
    (entry,) = _decode(data)
    assert entry.event == v["event"] and entry.family == v["family"] and entry.id == v["id"]
    assert entry.orig == nl.Tuple(v["src"], v["dst"], v["proto"], v["sport"], v["dport"])
    assert entry.reply == nl.Tuple(v["dst"], v["src"], v["proto"], v["dport"], v["sport"])
    assert entry.mark == v["mark"]
    assert entry.orig_counters == v["orig"] and entry.reply_counters == v["reply"]
    assert (entry.start_ns, entry.stop_ns) == (v["start"], v["stop"])


@BOUNDED
@given(entries())
def test_pyroute2_reads_the_same_entry(built):
    from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

    data, v = built
    msg = nfct_msg(data)
    msg.decode()
    orig = msg.get_attr("CTA_TUPLE_ORIG")
    ip, proto = orig.get_attr("CTA_TUPLE_IP"), orig.get_attr("CTA_TUPLE_PROTO")
    src = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")
    assert ipaddress.ip_address(src) == v["src"]
    assert proto.get_attr("CTA_PROTO_SRC_PORT") == v["sport"] and proto.get_attr("CTA_PROTO_DST_PORT") == v["dport"]
    assert msg.get_attr("CTA_MARK") == v["mark"] and msg.get_attr("CTA_ID") == v["id"]
    assert msg.get_attr("CTA_COUNTERS_ORIG").get_attr("CTA_COUNTERS_BYTES") == v["orig"][1]


def _cleanly(data):
    try:
        return _decode(data)
    except nl.MalformedMessage:
        return None


@BOUNDED
@given(entries(), st.data())
def test_cut_short_or_overwritten_entries_fail_cleanly(built, data):
    raw, _ = built
    cut = data.draw(st.integers(0, len(raw) - 1))
    _cleanly(raw[:cut])
    at = data.draw(st.integers(0, len(raw) - 1))
    junk = data.draw(st.binary(min_size=1, max_size=8))
    _cleanly(raw[:at] + junk + raw[at + len(junk):])


@BOUNDED
@given(st.binary(max_size=200))
def test_random_bytes_fail_cleanly(raw):
    _cleanly(raw)


def _with_tcp_state(data, kind, flags, state, lead=False):
    """The entry with a CTA_PROTOINFO carrying this TCP state appended (lead: after
    another attribute, not where the kernel puts it: the general reader's case)."""
    before = nl.attr(2, b"\x07") if lead else b""  # CTA_PROTOINFO_TCP_WSCALE_ORIGINAL
    protoinfo = nl.attr(nl.CTA_PROTOINFO | nl.NLA_F_NESTED, nl.attr(
        nl.CTA_PROTOINFO_TCP | nl.NLA_F_NESTED, before + nl.attr(nl.CTA_PROTOINFO_TCP_STATE, bytes([state]))))
    return nl.message(kind, flags, 0, data[nl.HEADER.size:] + protoinfo)


@BOUNDED
@given(entries(), st.integers(0, 12), st.booleans())
def test_the_id_and_tcp_state_are_read_alone(built, state, lead):
    data, _ = built
    (offset, length, kind, flags, _), = nl.messages(data)
    grown = _with_tcp_state(data, kind, flags, state, lead)
    entry = nl.decode_conntrack(grown, 0, len(grown), kind, flags)
    assert nl.conntrack_brief(grown, 0, len(grown)) == (entry.id, state) and entry.tcp_state == state
    assert nl.conntrack_brief(data, offset, length) == (entry.id, None)


@BOUNDED
@given(entries())
def test_an_entry_kept_raw_is_deleted_by_its_own_tuple(built):
    data, _ = built
    (offset, length, kind, flags, _), = nl.messages(data)
    close = nl.conntrack_close(data, offset, length)
    entry = nl.decode_conntrack(data, offset, length, kind, flags)
    assert close.id == entry.id and close.family == entry.family
    as_new = nl.message(nl.ctnetlink_type(nl.IPCTNL_MSG_CT_NEW), 0, 3, nl.conntrack_delete(close))
    (roffset, rlength, _, _, _), = nl.messages(as_new)
    assert nl.decode_conntrack(as_new, roffset, rlength, nl.ctnetlink_type(nl.IPCTNL_MSG_CT_NEW), 0).orig == entry.orig


@BOUNDED
@given(entries())
def test_the_one_unpack_layouts_read_what_the_general_path_reads(built):
    """A tuple and a counters nest of the kernel's usual layout are read in one unpack;
    the general reader gives the same values."""
    data, v = built
    (offset, length, _, _, _), = nl.messages(data)
    attrs = nl.attributes(data, offset + nl.HEADER.size + nl.NFGENMSG_SIZE, offset + length)
    reply = attrs[nl.CTA_TUPLE_REPLY]
    assert nl._ported_tuple(reply, v["family"]) == nl._tuple_read(reply, v["family"], "reply") == \
        nl.Tuple(v["dst"], v["src"], v["proto"], v["dport"], v["sport"])
    counted = attrs[nl.CTA_COUNTERS_REPLY]
    assert nl._two_be64(counted) == v["reply"]

