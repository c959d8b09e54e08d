"""Fuzz tests of every netlink decoder weft keeps by hand (datapath/nlcodec.py, and the
notification judges of datapath/changes.py that use it).

What each decoder must do with input it did not expect: random bytes, a valid answer
cut short anywhere, a valid answer with bytes overwritten: end with MalformedMessage
(a DatapathError the callers already report) or a result, never another exception,
never a hang, and never an entry that the bytes do not hold.  A well-formed answer,
built here with random values, random foreign attributes between the ones weft
reads, and checked against pyroute2's decoder of the same bytes, decodes to exactly
the values it was built from; cut short, it decodes to the whole messages before the
cut or to an error.  Examples and time are bounded so the unit suite stays fast.
"""

import ipaddress
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni_plugin.datapath import nlcodec as nl
from cni_plugin.datapath.changes import KernelChanges, TableChanges
from cni_plugin.datapath.constants import AF_BRIDGE, AF_INET, AF_INET6, IFF_UP, RTNH_F_ONLINK, WEFT_RTPROT

BOUNDED = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
DECODERS = {nl.RTM_NEWLINK: nl.decode_link, nl.RTM_NEWADDR: nl.decode_address,
            nl.RTM_NEWROUTE: nl.decode_route, nl.RTM_NEWNEIGH: nl.decode_neighbour,
            nl.ctnetlink_type(nl.IPCTNL_MSG_CT_NEW): nl.conntrack_close}
FAMILIES = {4: AF_INET, 6: AF_INET6}


def decode_all(data) -> list:
    """Every message of a datagram, decoded by its type (what the readers do)."""
    out = []
    for offset, length, kind, _, _ in nl.messages(data):
        if kind == nl.NLMSG_ERROR:
            out.append(("error", nl.error_code(data, offset, length)))
        elif kind in DECODERS:
            out.append(DECODERS[kind](data, offset, length))
    return out


def cleanly(call, *args):
    """call(*args), or None when it refused the input with MalformedMessage."""
    try:
        return call(*args)
    except nl.MalformedMessage:
        return None


# -- well-formed answers, with what they hold --------------------------------------------------
foreign = st.lists(st.tuples(st.integers(20, 40), st.binary(max_size=24)), max_size=3)


def with_foreign(draw, attrs: list, extra: bool = True) -> bytes:
    """attrs with foreign attributes (types weft never reads) at random places."""
    mixed = list(attrs)
    if not extra:
        return b"".join(mixed)
    for kind, value in draw(foreign):
        mixed.insert(draw(st.integers(0, len(mixed))), nl.attr(kind, value))
    return b"".join(mixed)


@st.composite
def addresses_of(draw, version):
    bits = 32 if version == 4 else 128
    value = draw(st.integers(0, (1 << bits) - 1))
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


@st.composite
def routes(draw, extra=True):
    version = draw(st.sampled_from((4, 6)))
    family = FAMILIES[version]
    prefix = draw(st.integers(0, 32 if version == 4 else 128))
    network = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    dst = network((int(draw(addresses_of(version))), prefix), strict=False)
    gateway = draw(st.none() | addresses_of(version))
    oif = draw(st.none() | st.integers(1, 2 ** 31 - 1))
    hop = draw(st.none() | st.integers(1, 2 ** 31 - 1)) if oif is None else None
    rtm_table, table_attr = draw(st.integers(0, 255)), draw(st.none() | st.integers(0, 2 ** 32 - 1))
    protocol, onlink = draw(st.integers(0, 255)), draw(st.booleans())
    attrs = []
    if prefix or draw(st.booleans()):
        attrs.append(nl.attr(nl.RTA_DST, dst.network_address.packed))
    if gateway is not None:
        attrs.append(nl.attr(nl.RTA_GATEWAY, gateway.packed))
    if oif is not None:
        attrs.append(nl.u32_attr(nl.RTA_OIF, oif))
    if hop is not None:
        attrs.append(nl.attr(nl.RTA_MULTIPATH, nl.RTNEXTHOP.pack(8, 0, 0, hop)))
    if table_attr is not None:
        attrs.append(nl.u32_attr(nl.RTA_TABLE, table_attr))
    body = nl.rtmsg(with_foreign(draw, attrs, extra), family=family, dst_len=prefix, table=rtm_table, protocol=protocol,
                    type_=nl.RTN_UNICAST, flags=RTNH_F_ONLINK if onlink else 0)
    expected = nl.Route(family, rtm_table if table_attr is None else table_attr, protocol,
                        nl.RouteEntry(dst, gateway, oif if oif is not None else hop, onlink))
    return nl.message(nl.RTM_NEWROUTE, 2, 1, body), expected


@st.composite
def neighbours(draw, extra=True):
    family = draw(st.sampled_from((AF_INET, AF_INET6, AF_BRIDGE)))
    ifindex, state = draw(st.integers(-2 ** 31, 2 ** 31 - 1)), draw(st.integers(0, 0xFFFF))
    version = {AF_INET: 4, AF_INET6: 6}.get(family) or draw(st.sampled_from((4, 6)))
    dst = draw(st.none() | addresses_of(version))
    lladdr = draw(st.none() | st.binary(min_size=0, max_size=8))
    attrs = []
    if dst is not None:
        attrs.append(nl.attr(nl.NDA_DST, dst.packed))
    if lladdr is not None:
        attrs.append(nl.attr(nl.NDA_LLADDR, lladdr))
    body = nl.ndmsg(with_foreign(draw, attrs, extra), family=family, ifindex=ifindex, state=state)
    expected = nl.Neighbour(family, ifindex, state, dst, lladdr.hex(":") if lladdr is not None else None)
    return nl.message(nl.RTM_NEWNEIGH, 2, 1, body), expected


names = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1, max_size=15)


@st.composite
def links(draw):
    index, up = draw(st.integers(1, 2 ** 31 - 1)), draw(st.booleans())
    name, kind = draw(names), draw(st.none() | names)
    mtu, master = draw(st.none() | st.integers(0, 2 ** 32 - 1)), draw(st.none() | st.integers(0, 2 ** 32 - 1))
    address = draw(st.none() | st.binary(max_size=8))
    attrs = [nl.string_attr(nl.IFLA_IFNAME, name)]
    if mtu is not None:
        attrs.append(nl.u32_attr(nl.IFLA_MTU, mtu))
    if master is not None:
        attrs.append(nl.u32_attr(nl.IFLA_MASTER, master))
    if address is not None:
        attrs.append(nl.attr(nl.IFLA_ADDRESS, address))
    if kind is not None:
        attrs.append(nl.nested(nl.IFLA_LINKINFO, nl.attr(3, b"\0" * 8), nl.string_attr(nl.IFLA_INFO_KIND, kind)))
    body = nl.ifinfomsg(with_foreign(draw, attrs), index=index, flags=IFF_UP if up else 0)
    expected = nl.Link(index=index, name=name, kind=kind or "", mtu=mtu or 0, up=up, master=master,
                       address=(address or b"").hex(":"))
    return nl.message(nl.RTM_NEWLINK, 2, 1, body), expected


@st.composite
def interface_addresses(draw):
    version = draw(st.sampled_from((4, 6)))
    ip = draw(addresses_of(version))
    prefix, index, scope = draw(st.integers(0, ip.max_prefixlen)), draw(st.integers(1, 2 ** 31 - 1)), \
        draw(st.integers(0, 255))
    body = nl.ifaddrmsg(with_foreign(draw, [nl.attr(nl.IFA_ADDRESS, ip.packed)]), family=FAMILIES[version],
                        prefixlen=prefix, scope=scope, index=index)
    return nl.message(nl.RTM_NEWADDR, 2, 1, body), (index, scope, ipaddress.ip_interface((ip, prefix)))


@st.composite
def errors(draw):
    code = draw(st.integers(0, 4095))
    request = nl.message(nl.RTM_NEWROUTE, 5, 1, b"\0" * 12)
    return nl.message(nl.NLMSG_ERROR, 0, 1, struct.pack("=i", -code) + request), ("error", code)


answers = st.one_of(routes(), neighbours(), links(), interface_addresses(), errors())


# -- well-formed: exactly the values they hold --------------------------------------------------
@BOUNDED
@given(st.lists(answers, min_size=1, max_size=6))
def test_a_well_formed_datagram_decodes_to_what_it_holds(built):
    assert decode_all(b"".join(data for data, _ in built)) == [expected for _, expected in built]


@BOUNDED
@given(st.one_of(routes(extra=False), neighbours(extra=False)))
def test_pyroute2s_decoder_reads_the_same_bytes_the_same_way(built):
    """The layouts are the kernel's, not only this module's idea of them (without
    foreign attributes: pyroute2 0.9 can loop on random values of the types it knows)."""
    from pyroute2.netlink.rtnl.ndmsg import ndmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    data, expected = built
    if isinstance(expected, nl.Route):
        msg = rtmsg(data)
        msg.decode()
        entry = expected.entry
        assert (msg["family"], msg["dst_len"], msg["proto"]) == (expected.family, entry.dst.prefixlen,
                                                                 expected.protocol)
        assert msg.get_attr("RTA_TABLE", msg["table"]) == expected.table
        gateway = msg.get_attr("RTA_GATEWAY")
        assert (ipaddress.ip_address(gateway) if gateway else None) == entry.gateway
        if msg.get_attr("RTA_DST"):
            assert ipaddress.ip_address(msg.get_attr("RTA_DST")) == entry.dst.network_address
        assert bool(msg["flags"] & RTNH_F_ONLINK) == entry.onlink
    else:
        msg = ndmsg(data)
        msg.decode()
        assert (msg["family"], msg["ifindex"], msg["state"]) == expected[:3]
        if expected.dst is not None:
            assert ipaddress.ip_address(msg.get_attr("NDA_DST")) == expected.dst


# -- cut short: the whole messages before the cut, or a clean error ------------------------------
@BOUNDED
@given(st.lists(answers, min_size=1, max_size=4), st.data())
def test_a_datagram_cut_anywhere_yields_its_whole_messages_or_an_error(built, data):
    whole = b"".join(message for message, _ in built)
    cut = data.draw(st.integers(0, len(whole) - 1))
    got = cleanly(decode_all, whole[:cut])
    if got is not None:
        ends = [sum(len(m) for m, _ in built[:i + 1]) for i in range(len(built))]
        assert cut in [0] + ends and got == [expected for _, expected in built[:ends.index(cut) + 1 if cut else 0]]


# -- anything at all: a result or MalformedMessage, nothing else -----------------------------------
@BOUNDED
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_or_hang_a_decoder(data):
    cleanly(decode_all, data)
    cleanly(lambda: list(nl.messages(data)))
    cleanly(nl.attributes, data, 0, len(data))
    for decode in DECODERS.values():
        cleanly(decode, data, 0, len(data))
    if len(data) >= nl.HEADER.size:
        claimed = struct.unpack_from("=I", data)[0]
        for decode in DECODERS.values():
            cleanly(decode, data, 0, claimed)  # a length that lies about the buffer


@BOUNDED
@given(answers, st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=6))
def test_overwritten_bytes_never_crash_a_decoder(built, changes):
    corrupt = bytearray(built[0])
    for at, value in changes:
        corrupt[at % len(corrupt)] = value
    for entry in cleanly(decode_all, bytes(corrupt)) or ():
        if isinstance(entry, nl.Route):  # whatever came out is a value of the declared kind
            assert entry.entry.dst.version == {AF_INET: 4, AF_INET6: 6}[entry.family]


@BOUNDED
@given(st.binary(max_size=256))
def test_random_attribute_bytes_are_walked_within_their_bounds(data):
    found = cleanly(nl.attributes, data, 0, len(data))
    if found is not None:
        assert sum(len(value) for value in found.values()) <= len(data)


# -- the notification judges (changes.py): a change, or no change, never an exception --------------
def judge(cls, **fields):
    """A judge without its socket: only its verdict on bytes is tested here (the netns
    tests follow real notifications)."""
    made = cls.__new__(cls)
    made.__dict__.update(fields)
    return made


@pytest.fixture(scope="module")
def judges():
    return [judge(KernelChanges, device_indexes=frozenset({7})), judge(KernelChanges, device_indexes=frozenset()),
            judge(TableChanges, family=1, name=b"weft")]


def notification(kind: int, body: bytes) -> bytes:
    return nl.message(kind, 0, 0, body)


@BOUNDED
@given(st.binary(max_size=512))
def test_random_notifications_are_judged_without_an_exception(judges, data):
    for judge in judges:
        assert judge._any_relevant(data) in (True, False)


@BOUNDED
@given(st.integers(0, 255), st.integers(1, 100), st.data())
def test_notifications_cut_short_count_as_a_change_or_are_judged_whole(judges, protocol, index, data):
    ours, _, table = judges
    route = notification(nl.RTM_NEWROUTE, nl.rtmsg(nl.u32_attr(nl.RTA_OIF, index), family=AF_INET,
                                                   protocol=protocol))
    neighbour = notification(nl.RTM_NEWNEIGH, nl.ndmsg(family=AF_BRIDGE, ifindex=index))
    rule = notification((nl.NFNL_SUBSYS_NFTABLES << 8) | 6,
                        struct.pack("=BBH", 1, 0, 0) + nl.string_attr(nl.NFT_TABLE_ATTRIBUTE, "other"))
    whole = route + neighbour
    assert ours._any_relevant(whole) == (protocol == WEFT_RTPROT or index == 7)
    assert table._any_relevant(rule) is False
    cut = data.draw(st.integers(1, len(whole) - 1))
    if cut != len(route):  # a cut inside a message: malformed, so a change
        assert ours._any_relevant(whole[:cut]) is True
    cut = data.draw(st.integers(1, len(rule) - 1))
    assert table._any_relevant(rule[:cut]) is True


# -- ctnetlink: an entry's original tuple and zone, handed back as they came ----------------------
@BOUNDED
@given(st.sampled_from([AF_INET, AF_INET6]), st.lists(st.tuples(st.integers(1, 40), st.binary(max_size=20)),
                                                      min_size=1, max_size=4),
       st.one_of(st.none(), st.binary(min_size=2, max_size=2)), st.data())
def test_a_conntrack_entry_decodes_to_its_tuple_and_zone(family, inner, zone, data):
    tuple_orig = b"".join(nl.attr(kind, value) for kind, value in inner)
    attrs = [nl.attr(nl.CTA_TUPLE_ORIG | nl.NLA_F_NESTED, tuple_orig)] + ([nl.attr(nl.CTA_ZONE, zone)] if zone else [])
    message = nl.message(nl.ctnetlink_type(nl.IPCTNL_MSG_CT_NEW), 0, 1,
                         nl.nfgenmsg(family) + with_foreign(data.draw, attrs))
    assert decode_all(message) == [nl.Close(0, family, tuple_orig, zone)]
    assert nl.conntrack_delete(nl.Close(0, family, tuple_orig, zone))[nl.NFGENMSG_SIZE:] == b"".join(
        nl.attr(kind, value) for kind, value in
        [(nl.CTA_TUPLE_ORIG | nl.NLA_F_NESTED, tuple_orig)] + ([(nl.CTA_ZONE, zone)] if zone else []))


@BOUNDED
@given(st.ip_addresses(), st.booleans(), st.booleans())
def test_a_conntrack_address_dump_names_the_address_and_its_filter(ip, reply, source):
    request = nl.conntrack_address_dump(ip, reply, source)
    family = AF_INET if ip.version == 4 else AF_INET6
    assert request[0] == family
    top = nl.attributes(request, nl.NFGENMSG_SIZE, len(request))
    tuple_ = top[nl.CTA_TUPLE_REPLY if reply else nl.CTA_TUPLE_ORIG]
    tuple_ip = nl.attributes(tuple_, 0, len(tuple_))[nl.CTA_TUPLE_IP]
    ip_attrs = nl.attributes(tuple_ip, 0, len(tuple_ip))
    end = {(4, True): nl.CTA_IP_V4_SRC, (4, False): nl.CTA_IP_V4_DST,
           (6, True): nl.CTA_IP_V6_SRC, (6, False): nl.CTA_IP_V6_DST}[(ip.version, source)]
    assert ip_attrs == {end: ip.packed}
    flags = nl.attributes(top[nl.CTA_FILTER], 0, len(top[nl.CTA_FILTER]))
    assert nl.u32(flags[nl.CTA_FILTER_REPLY_FLAGS if reply else nl.CTA_FILTER_ORIG_FLAGS], "flags") == \
        (nl.CTA_FILTER_FLAG_IP_SRC if source else nl.CTA_FILTER_FLAG_IP_DST)
