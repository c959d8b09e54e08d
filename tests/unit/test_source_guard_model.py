"""Port records and the source-validation table's plan: pure logic, no kernel."""

import ipaddress
import json

import pytest

from cni_plugin.datapath import source_guard
from cni_plugin.guard import ports

PORT = "wft0123456789ab"


def record(**changes) -> dict:
    data = {"port": PORT, "network": "weft", "containerID": "c1", "ifname": "eth0",
            "addresses": ["10.244.1.5", "fd10::5"], "mac": "02:00:00:00:00:01", "validated": True,
            "podNamespace": "x", "podName": "a", "bridge": "cbr0"}
    data.update(changes)
    return data


def test_a_record_round_trips():
    parsed = ports.PortRecord.parse(json.dumps(record()), "f")
    assert parsed.addresses == (ipaddress.ip_address("10.244.1.5"), ipaddress.ip_address("fd10::5"))
    assert parsed.pod == "x/a" and parsed.validated
    assert ports.PortRecord.parse(parsed.to_json(), "f") == parsed


@pytest.mark.parametrize("change,words", [
    ({"port": "eth0"}, "not a weft host veth name"),
    ({"port": 'wft"}; drop'}, "not a weft host veth name"),
    ({"mac": "02:00:00:00:00:0G"}, "not a lower-case MAC"),
    ({"mac": "02:00:00:00:00:01 . x"}, "not a lower-case MAC"),
    ({"addresses": []}, "non-empty list"),
    ({"addresses": ["10.244.1.5/24"]}, "10.244.1.5/24"),
    ({"addresses": [5]}, "must be strings"),
    ({"validated": 1}, "validated must be true or false"),
    ({"podName": ["a"]}, "podName must be a string"),
])
def test_a_bad_record_is_refused_naming_the_field(change, words):
    with pytest.raises(ports.PortRecordError, match="f") as caught:
        ports.PortRecord.parse(json.dumps(record(**change)), "f")
    assert words in str(caught.value)


def test_read_all_keeps_good_records_and_reports_bad_ones(tmp_path):
    good = ports.PortRecord.parse(json.dumps(record()), "f")
    ports.write(str(tmp_path), good)
    (tmp_path / "wft00000000000a").write_text("{not json")
    (tmp_path / "wft00000000000b").write_text(json.dumps(record()))  # names another port
    (tmp_path / "notes.txt").write_text("ignored")
    found, problems = ports.read_all(str(tmp_path))
    assert found == {PORT: good}
    assert len(problems) == 2 and any("is not JSON" in p for p in problems) \
        and any("names port" in p for p in problems)
    assert ports.remove(str(tmp_path), PORT) and not ports.remove(str(tmp_path), PORT)
    assert ports.read_all(str(tmp_path / "missing")) == ({}, [])


def test_a_network_name_too_long_for_a_file_name_still_gets_a_directory():
    path = ports.directory("/run/weft", "n" * 300)
    assert len(path.rsplit("/", 1)[1]) <= 255 and path.endswith(".ports")
    assert path != ports.directory("/run/weft", "n" * 299)
    assert ports.directory("/run/weft", "weft") == "/run/weft/weft.ports"


def test_port_elements_are_json_data_keyed_by_the_port():
    port = source_guard.Port(PORT, "02:00:00:00:00:01", (ipaddress.ip_address("10.244.1.5"),
                                                         ipaddress.ip_address("fd10::5")))
    elements = port.elements()
    assert elements["ports"] == [PORT]
    assert elements["mac"] == [{"concat": [PORT, "02:00:00:00:00:01"]}]
    assert elements["addr4"] == [{"concat": [PORT, "10.244.1.5"]}]
    assert elements["addr6"] == [{"concat": [PORT, "fd10::5"]}]
    assert elements["nd6"] == [{"concat": [PORT, "0xfd100000000000000000000000000005"]}]
    assert port.listed()["nd6"] == {f"{PORT} . 0xfd100000000000000000000000000005"}


def test_an_ipv4_only_port_has_no_ipv6_elements():
    elements = source_guard.Port(PORT, "02:00:00:00:00:01", (ipaddress.ip_address("10.244.1.5"),)).elements()
    assert set(elements) == {"ports", "mac", "addr4"}


def test_every_refusal_records_then_drops_in_separate_rules():
    """A full seen set fails its recording rule; the drop must be a rule of its own."""
    plan = source_guard.rules()
    assert set(plan) == set(source_guard.CHAINS)
    for chain, chain_rules in plan.items():
        comments = [c for c, _ in chain_rules]
        assert len(set(comments)) == len(comments), chain  # the reconcile compares by comment
        for comment, expr in chain_rules:
            gotos = [e["goto"]["target"] for e in expr if "goto" in e]
            if any("set" in e for e in expr):  # a recording rule: nothing after the recording
                assert chain in source_guard.DROPS and not any("drop" in e or "accept" in e for e in expr)
            if {"drop": None} in expr:
                assert expr == [{"counter": source_guard.COUNTER}, {"drop": None}], comment
            assert all(target in plan for target in gotos), comment
        if chain in source_guard.DROPS:
            seen, _ = source_guard.DROPS[chain]
            assert seen in source_guard.SEEN_SETS
            assert chain_rules[-1][1] == [{"counter": source_guard.COUNTER}, {"drop": None}]
        elif chain not in ("prerouting",):  # a regular chain must not fall through to accept
            assert chain_rules[-1][1] in ([{"goto": {"target": t}}] for t in source_guard.DROPS), chain


def test_listed_nd_elements_compare_whatever_padding_nft_prints():
    padded = source_guard.Port(PORT, "02:00:00:00:00:01", (ipaddress.ip_address("::5"),)).listed()["nd6"]
    assert padded == {source_guard._normal("nd6", f"{PORT} . 0x5")}
    assert source_guard._normal("addr4", f"{PORT} . 10.0.0.1") == f"{PORT} . 10.0.0.1"


def test_the_pod_index_finds_a_pods_other_attachments(tmp_path):
    run = str(tmp_path)
    first, second = ports.directory(run, "weft"), ports.directory(run, "n" * 300)
    ports.index_add(run, "c1", first, PORT)
    ports.index_add(run, "c1", second, "wft0123456789ac")
    ports.index_add(run, "c2", first, "wft0123456789ad")
    assert ports.siblings(run, "c1", PORT) == [(second, "wft0123456789ac")]
    assert ports.siblings(run, "c1", "wft0123456789ac") == [(first, PORT)]
    ports.index_remove(run, "c1", second, "wft0123456789ac")
    assert ports.siblings(run, "c1", PORT) == []
    ports.index_remove(run, "c1", first, PORT)
    assert not (tmp_path / ports.POD_INDEX / ports.pod_index(run, "c1").rsplit("/", 1)[1]).exists()


def test_a_record_allows_the_pods_addresses_on_its_other_interfaces():
    parsed = ports.PortRecord.parse(json.dumps(record(podAddresses=["10.246.3.2", "10.244.1.5"])), "f")
    assert [str(a) for a in parsed.sources] == ["10.244.1.5", "fd10::5", "10.246.3.2"]
    with pytest.raises(ports.PortRecordError, match="podAddresses"):
        ports.PortRecord.parse(json.dumps(record(podAddresses="10.0.0.1")), "f")
