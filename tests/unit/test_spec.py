"""The protocol layer in-process: env, netconf checks, results, dispatch (no root)."""

import json

import pytest

from cni_plugin.plugin.commands import HANDLERS
from cni_plugin.cni import result as cni_result
from cni_plugin.cni.dispatch import dispatch

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
CONF = {"cniVersion": "1.0.0", "name": "net1", "type": "weft",
        "ipam": {"type": "weft-ipam", "ranges": [[{"subnet": "10.1.0.0/24"}]]}}


def run(env=None, conf=None, raw=None):
    stdin = raw if raw is not None else json.dumps(conf if conf is not None else CONF).encode()
    out, code = dispatch(HANDLERS, {**ENV, **(env or {})}, stdin)
    return code, json.loads(out) if out else None


def test_version_lists_supported_versions_in_asked_version():
    code, out = run({"CNI_COMMAND": "VERSION"}, raw=b'{"cniVersion": "0.4.0"}')
    assert code == 0
    assert out == {"cniVersion": "0.4.0",
                   "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    code, out = run({"CNI_COMMAND": "VERSION"}, raw=b"")
    assert out["cniVersion"] == "1.1.0"


def test_malformed_json_is_code_6():
    code, out = run(raw=b"{not json")
    assert code == 1 and out["code"] == 6 and "not valid JSON" in out["msg"]


def test_unsupported_version_is_code_1():
    code, out = run(conf={**CONF, "cniVersion": "0.2.0"})
    assert out["code"] == 1 and "0.2.0" in out["msg"]


def test_missing_env_lists_every_name():
    env = {**ENV}
    for key in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_PATH"):
        env.pop(key)
    out, code = dispatch(HANDLERS, env, json.dumps(CONF).encode())
    err = json.loads(out)
    assert err["code"] == 4
    for key in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_PATH"):
        assert key in err["msg"]


def test_unknown_command_is_code_4():
    code, out = run({"CNI_COMMAND": "FROB"})
    assert out["code"] == 4 and "FROB" in out["msg"]


@pytest.mark.parametrize("ifname", ["", "a" * 16, ".", "..", "et/h0", "eth:0", "eth 0", "eth\t0"])
def test_bad_ifname_is_code_4(ifname):
    code, out = run({"CNI_IFNAME": ifname})
    assert code == 1 and out["code"] == 4 and "CNI_IFNAME" in out["msg"]


def test_bad_container_id_is_code_4():
    assert run({"CNI_CONTAINERID": "../x"})[1]["code"] == 4


@pytest.mark.parametrize("name", ["", "-net", "net/1", "a b", None])
def test_bad_network_name_is_code_7(name):
    code, out = run(conf={**CONF, "name": name})
    assert out["code"] == 7 and "network name" in out["msg"]


def test_missing_ipam_is_code_7():
    conf = {k: v for k, v in CONF.items() if k != "ipam"}
    code, out = run(conf=conf)
    assert out["code"] == 7 and "ipam" in out["msg"]


@pytest.mark.parametrize("ipam_type", ["../weft-ipam", "/usr/lib/cni/host-local", "a/b"])
def test_ipam_type_with_path_is_code_7(ipam_type):
    code, out = run(conf={**CONF, "ipam": {"type": ipam_type}})
    assert out["code"] == 7 and ipam_type in out["msg"]


@pytest.mark.parametrize("key,value", [("mtu", "1500"), ("mtu", 20), ("hairpinMode", "yes"),
                                       ("bridge", "a" * 20), ("isGateway", 1)])
def test_wrong_typed_keys_are_code_7(key, value):
    code, out = run(conf={**CONF, key: value})
    assert code == 1 and out["code"] == 7, out
    assert key in out["msg"] and str(value) in out["msg"], out["msg"]


def test_bad_mac_is_code_7():
    code, out = run(conf={**CONF, "runtimeConfig": {"mac": "zz:00:00:00:00:00"}})
    assert out["code"] == 7 and "zz:00" in out["msg"]


def test_check_gc_status_need_their_versions():
    assert run({"CNI_COMMAND": "CHECK"}, conf={**CONF, "cniVersion": "0.3.1"})[1]["code"] == 1
    assert run({"CNI_COMMAND": "GC"}, conf=CONF)[1]["code"] == 1
    assert run({"CNI_COMMAND": "STATUS"}, conf={**CONF, "cniVersion": "0.4.0"})[1]["code"] == 1


def test_missing_subnet_file_is_11_on_add_and_50_on_status(tmp_path):
    conf = {**CONF, "cniVersion": "1.1.0", "subnetFile": str(tmp_path / "weft.env"),
            "ipam": {"type": "weft-ipam"}}
    code, out = run(conf=conf)
    assert out["code"] == 11 and str(tmp_path / "weft.env") in out["msg"] and "weftd" in out["msg"]
    code, out = run({"CNI_COMMAND": "STATUS"}, conf=conf)
    assert out["code"] == 50 and "weftd" in out["msg"]


def test_render_old_versions_carry_ip_version():
    internal = cni_result.normalize({"ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"},
                                             {"address": "fd00::2/64"}],
                                     "routes": [{"dst": "0.0.0.0/0", "mtu": 1400}]})
    old = cni_result.render(internal, "0.3.1")
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    assert old["routes"] == [{"dst": "0.0.0.0/0"}]
    new = cni_result.render(internal, "1.1.0")
    assert "version" not in new["ips"][0] and new["routes"][0]["mtu"] == 1400


def test_normalize_accepts_0_3_results_as_prev_result():
    prev = {"cniVersion": "0.3.1", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"version": "4", "interface": 0, "address": "10.0.0.5/24"}]}
    assert cni_result.normalize(prev)["ips"] == [{"address": "10.0.0.5/24", "interface": 0}]


def test_status_is_51_when_weftd_reports_a_lease_conflict(tmp_path):
    from cni_plugin.subnet import status_file

    lease = tmp_path / "weft.env"
    lease.write_text("WEFT_NETWORK=10.244.0.0/16\nWEFT_SUBNET=10.244.3.1/24\n")
    status_file.write(str(tmp_path / "weft.status.json"),
                      {"conflict": "subnet 10.244.3.0-24 of node a is now held by b"})
    conf = {**CONF, "cniVersion": "1.1.0", "subnetFile": str(lease), "ipam": {"type": "weft-ipam"}}
    code, out = run({"CNI_COMMAND": "STATUS"}, conf=conf)
    assert out["code"] == 51 and "held by b" in out["msg"]


def test_a_crashing_handler_is_code_999_with_the_traceback_in_details():
    def cmd_add(env, conf):
        raise KeyError("no-such-key")

    out, code = dispatch({"ADD": cmd_add}, ENV, json.dumps(CONF).encode())
    err = json.loads(out)
    assert code == 1 and err["code"] == 999, err
    assert err["msg"] == "internal error: KeyError: 'no-such-key'"
    assert "Traceback" in err["details"] and "in cmd_add" in err["details"], err["details"]
    assert err["cniVersion"] == CONF["cniVersion"]
