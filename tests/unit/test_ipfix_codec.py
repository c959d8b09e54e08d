"""The IPFIX codec (cni_plugin/flows/ipfix.py): flow records round-trip through messages
(templates, both families, split under MAX_MESSAGE with sequence numbers counting data
records), interim records carry deltas that add up to the final totals, a denied
attempt is one dropped record, and random or cut bytes end in MalformedIPFIX or a result.  The real
collector (nfcapd, read back with nfdump) is in tests/cluster/test_flows.py."""

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni_plugin.flows import ipfix

BOUNDED = settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def flow_records(draw):
    version = draw(st.sampled_from((4, 6)))
    address = st.integers(0, 2 ** (32 if version == 4 else 128) - 1).map(
        lambda n: str(ipaddress.IPv4Address(n) if version == 4 else ipaddress.IPv6Address(n)))
    return {"src": draw(address), "dst": draw(address), "sport": draw(st.integers(0, 65535)),
            "dport": draw(st.integers(0, 65535)), "proto": draw(st.sampled_from(("tcp", "udp", "sctp"))),
            "start": "2026-12-07T04:00:00.125Z", "end": "2026-12-07T04:00:09.5Z",
            "bytes": {"sent": draw(st.integers(0, 2 ** 40)), "received": draw(st.integers(0, 2 ** 40))},
            "packets": {"sent": draw(st.integers(0, 2 ** 30)), "received": draw(st.integers(0, 2 ** 30))}}


@BOUNDED
@given(st.lists(flow_records(), max_size=60), st.integers(0, 2 ** 32 - 1))
def test_records_round_trip_two_one_way_records_each(records, sequence):
    out, after = ipfix.messages(records, sequence, 1796616000, 7, with_templates=True)
    templates, decoded, expected_sequence = {}, [], sequence
    for message in out:
        assert len(message) <= ipfix.MAX_MESSAGE
        (version, _, export_time, seq, domain), got = ipfix.decode(message, templates)
        assert (version, export_time, seq, domain) == (10, 1796616000, expected_sequence & 0xFFFFFFFF, 7)
        expected_sequence += len(got)
        decoded += got
    assert after == sequence + 2 * len(records)
    assert len(decoded) == 2 * len(records)
    for record, forward, backward in zip(records, decoded[::2], decoded[1::2]):
        v6 = ":" in record["src"]
        src_ie, dst_ie = (27, 28) if v6 else (8, 12)
        assert (forward[src_ie], forward[dst_ie], forward[7], forward[11]) == \
            (str(ipaddress.ip_address(record["src"])), str(ipaddress.ip_address(record["dst"])),
             record["sport"], record["dport"])
        assert (forward[1], forward[2]) == (record["bytes"]["sent"], record["packets"]["sent"])
        assert (backward[1], backward[2]) == (record["bytes"]["received"], record["packets"]["received"])
        assert (backward[7], backward[11]) == (record["dport"], record["sport"])
        assert (forward[152], forward[153]) == (1796616000125, 1796616009500)
        end = ipfix.END_OF_FLOW if record["proto"] == "tcp" else ipfix.IDLE_TIMEOUT
        assert (forward[89], forward[136], backward[89], backward[136]) == (64, end, 64, end)


def _decoded(out):
    templates, records = {}, []
    for message in out:
        records += ipfix.decode(message, templates)[1]
    return records


@BOUNDED
@given(st.lists(st.tuples(st.integers(0, 2 ** 20), st.integers(0, 2 ** 30), st.integers(0, 2 ** 20),
                          st.integers(0, 2 ** 30)), min_size=1, max_size=5))
def test_interim_records_export_deltas_that_add_up_to_the_final_totals(steps):
    """A long-lived connection's interim records (flowEndReason 2, active timeout) and
    its final one (3, end of flow) carry what was counted since the previous export."""
    totals = [tuple(sum(s[i] for s in steps[:n + 1]) for i in range(4)) for n in range(len(steps))]
    reported, decoded = {}, []
    for n, (ps, bs, pr, br) in enumerate(totals):
        record = {"id": "c1", "src": "fd10::2", "dst": "fd10::3", "sport": 4000, "dport": 80, "proto": "tcp",
                  "start": "2026-12-07T04:00:00Z", "end": "2026-12-07T04:00:09Z", "verdict": "allowed",
                  "final": n == len(totals) - 1, "packets": {"sent": ps, "received": pr},
                  "bytes": {"sent": bs, "received": br}}
        decoded += _decoded(ipfix.messages([record], 0, 0, 1, True, reported)[0])
    assert reported == {}  # the final record forgets the connection
    forward, backward = decoded[::2], decoded[1::2]
    assert [r[136] for r in forward] == [ipfix.ACTIVE_TIMEOUT] * (len(steps) - 1) + [ipfix.END_OF_FLOW]
    assert (sum(r[2] for r in forward), sum(r[1] for r in forward)) == totals[-1][:2]
    assert (sum(r[2] for r in backward), sum(r[1] for r in backward)) == totals[-1][2:]
    assert [(r[2], r[1]) for r in forward] == [(s[0], s[1]) for s in steps]


def test_a_denied_attempt_is_one_dropped_record():
    denied = {"id": "d1", "src": "10.244.1.5", "dst": "10.244.2.7", "sport": None, "dport": 80, "proto": "tcp",
              "start": "2026-12-07T04:00:00Z", "end": "2026-12-07T04:00:00Z", "verdict": "denied",
              "packets": {"sent": 1, "received": 0}, "bytes": {"sent": 0, "received": 0}}
    out, sequence = ipfix.messages([denied], 10, 0, 1, True, {})
    (record,) = _decoded(out)
    assert sequence == 11
    assert (record[8], record[12], record[7], record[11], record[4]) == ("10.244.1.5", "10.244.2.7", 0, 80, 6)
    assert (record[2], record[1], record[89], record[136]) == (1, 0, ipfix.DROPPED_ACL_DENY, ipfix.END_OF_FLOW)


def test_templates_alone_when_nothing_flows():
    (message,), sequence = ipfix.messages([], 5, 0, 1, with_templates=True)
    templates = {}
    assert ipfix.decode(message, templates)[1] == [] and sorted(templates) == [256, 257] and sequence == 5


@BOUNDED
@given(st.binary(max_size=300), st.data())
def test_random_or_cut_messages_fail_cleanly(raw, data):
    (message,), _ = ipfix.messages([{"src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1, "dport": 2,
                                     "proto": "udp", "start": "2026-12-07T04:00:00Z", "end": "2026-12-07T04:00:01Z",
                                     "bytes": {"sent": 1, "received": 2}, "packets": {"sent": 1, "received": 1}}],
                                   0, 0, 1, with_templates=True)
    cut = data.draw(st.integers(0, len(message)))
    for candidate in (raw, message[:cut], message[:cut] + raw[:len(message) - cut]):
        try:
            ipfix.decode(candidate, {})
        except ipfix.MalformedIPFIX:
            pass


def test_interim_counters_of_a_connection_whose_end_never_came_are_forgotten():
    """A connection with interim records whose DESTROY was lost: its counters leave the
    exporter's bookkeeping once no record of it was exported for the horizon; one still
    exported stays (its final record needs them to be a delta)."""
    exporter = ipfix.Exporter(("127.0.0.1", 9), template_interval=600.0)  # discard port
    try:
        def interim(key):
            return {"id": key, "src": "10.244.1.5", "dst": "10.244.2.7", "sport": 4000, "dport": 80,
                    "proto": "tcp", "start": "2026-12-07T04:00:00Z", "end": "2026-12-07T04:01:00Z",
                    "verdict": "allowed", "final": False, "packets": {"sent": 3, "received": 2},
                    "bytes": {"sent": 300, "received": 200}}
        exporter.export([interim("lost"), interim("open")])
        assert set(exporter.reported) == {"lost", "open"}
        counted, at = exporter.reported["lost"]
        exporter.reported["lost"] = (counted, at - 100.0)  # its last interim record, 100 s ago
        exporter.forget_stale(50.0)
        assert set(exporter.reported) == {"open"}
        exporter.export([dict(interim("open"), final=True)])
        exporter.forget_stale(50.0)
        assert exporter.reported == {}
    finally:
        exporter.close()
