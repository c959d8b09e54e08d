"""The conflist's cniVersion from the plugins' VERSION answers and the node's runtime
(cni/chain_version.py): the decision and the runtime rule as pure functions, and ask()
against stand-in plugins that misbehave the ways a real one can (missing, hanging, loud,
failing, answering garbage)."""

import json
import os
import time

import pytest

from cni_plugin.cni import chain_version
from cni_plugin.cni.chain_version import (Answer, RuntimeVerdict, ask, chain_plugins, check_forced, choose,
                                         judge_runtime, parse_runtime, unconfirmed)

OLD = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0")   # plugins 1.1 (Debian 12)
NEW = OLD + ("1.1.0",)                                          # plugins 1.9


NODE = "node a's containerRuntimeVersion"
TAKES = judge_runtime("containerd://2.1.9", NODE)         # a runtime known to take 1.1.0
REFUSES = judge_runtime("containerd://1.7.13", NODE)      # one known to refuse it
UNKNOWN = unconfirmed("reading node a: Kubernetes API https://10.96.0.1:443 unreachable: timed out")


def answered(name, supported):
    return Answer(name, f"/opt/cni/bin/{name}", tuple(supported))


def test_every_plugin_supporting_1_1_0_on_a_runtime_taking_it_gives_1_1_0():
    choice = choose([answered("weft", NEW), answered("weft-ipam", NEW), answered("portmap", NEW)], TAKES)
    assert choice == ("1.1.0", "every plugin of the chain supports 1.1.0: weft, weft-ipam, portmap; and the "
                               "runtime containerd://2.1.9 (node a's containerRuntimeVersion) takes 1.1.0 "
                               "(containerd 2.0.0 and later carry libcni 1.2 or later)")


@pytest.mark.parametrize("runtime,why", [
    (REFUSES, "not 1.1.0: the runtime containerd://1.7.13 (node a's containerRuntimeVersion) is older than "
              "containerd 2.0.0: its libcni (before 1.2) refuses 1.1.0 results; "),
    (UNKNOWN, "not 1.1.0: the runtime could not be confirmed: reading node a: Kubernetes API "
              "https://10.96.0.1:443 unreachable: timed out; "),
    (None, "not 1.1.0: the runtime could not be confirmed: nobody said which it is; "),
])
def test_plugins_supporting_1_1_0_are_not_enough_without_the_runtime(runtime, why):
    choice = choose([answered("weft", NEW), answered("portmap", NEW)], runtime)
    assert choice == ("1.0.0", why + "every plugin of the chain supports 1.1.0: weft, portmap")


def test_one_older_plugin_holds_the_chain_at_1_0_0_and_is_named():
    choice = choose([answered("weft", NEW), answered("weft-ipam", NEW), answered("portmap", OLD)], TAKES)
    assert choice == ("1.0.0", "not 1.1.0, held back by: portmap (/opt/cni/bin/portmap) supports 0.1.0, 0.2.0, "
                               "0.3.0, 0.3.1, 0.4.0, 1.0.0")


def test_plugins_and_runtime_holding_back_are_both_named():
    choice = choose([answered("weft", NEW), answered("portmap", OLD)], REFUSES)
    assert choice.version == "1.0.0"
    assert choice.reason.startswith("not 1.1.0, held back by: portmap (/opt/cni/bin/portmap) supports ")
    assert choice.reason.endswith("; and the runtime containerd://1.7.13 (node a's containerRuntimeVersion) is "
                                  "older than containerd 2.0.0: its libcni (before 1.2) refuses 1.1.0 results")


def test_a_plugin_without_an_answer_counts_as_not_1_1_0():
    missing = Answer("bandwidth", "/opt/cni/bin", (), "is not an executable file in /opt/cni/bin")
    choice = choose([answered("weft", NEW), missing], TAKES)
    assert choice == ("1.0.0", "not 1.1.0, held back by: bandwidth (/opt/cni/bin) is not an executable "
                               "file in /opt/cni/bin")


def test_a_plugin_lacking_1_0_0_too_is_reported_as_fatal_for_the_chain():
    choice = choose([answered("weft", NEW), answered("flannel", ("0.3.0", "0.3.1", "0.4.0"))], TAKES)
    assert choice.version == "1.0.0"
    assert "flannel lacks 1.0.0 too, so the runtime will refuse the chain" in choice.reason


def test_no_plugin_to_ask_gives_1_0_0():
    assert choose([], TAKES).version == "1.0.0"


def test_a_forced_version_wins_and_names_the_plugins_that_lack_it():
    choice = choose([answered("weft", NEW), answered("portmap", OLD)], forced="1.1.0", forced_by="WEFT_CNI_VERSION")
    assert choice.version == "1.1.0"
    assert choice.reason.startswith("forced by WEFT_CNI_VERSION; the runtime will refuse the chain")
    assert "portmap (/opt/cni/bin/portmap)" in choice.reason
    assert choose([answered("portmap", NEW)], REFUSES, "1.1.0", "--cni-version") == \
        ("1.1.0", "forced by --cni-version")  # the operator's word, the runtime not consulted
    assert choose([answered("portmap", NEW)], TAKES, "1.0.0", "--cni-version") == ("1.0.0", "forced by --cni-version")


# -- the runtime rule ----------------------------------------------------------------------

@pytest.mark.parametrize("reported", [
    "containerd://2.0.0", "containerd://2.1.9", "containerd://v2.1.9", "containerd://2.1.9+ds1-5",
    "containerd://2.1.0-rc.1", "containerd://2.0.0-k3s1", "containerd://3.0.0", "containerd://10.0.0",
    "cri-o://1.31.0", "cri-o://1.33.2", "cri-o://2.0.0",
])
def test_containerd_from_2_0_and_cri_o_from_1_31_take_1_1_0(reported):
    verdict = judge_runtime(reported, NODE)
    assert verdict.accepts and verdict.known, verdict
    assert verdict.reason.startswith(f"the runtime {reported.replace('//v', '//')} ({NODE}) takes 1.1.0 (")


@pytest.mark.parametrize("reported,first", [
    ("containerd://1.7.13", "containerd 2.0.0"), ("containerd://1.6.20~ds1", "containerd 2.0.0"),
    ("containerd://1.7.23-k3s2", "containerd 2.0.0"), ("containerd://v1.7.0", "containerd 2.0.0"),
    ("containerd://1.99.99", "containerd 2.0.0"), ("containerd://0.2.3", "containerd 2.0.0"),
    ("cri-o://1.30.14", "CRI-O 1.31.0"), ("cri-o://1.28.0", "CRI-O 1.31.0"),
])
def test_older_containerd_and_cri_o_cap_at_1_0_0_and_are_named(reported, first):
    verdict = judge_runtime(reported, NODE)
    assert not verdict.accepts and verdict.known
    assert f"({NODE}) is older than {first}: its libcni (before 1.2) refuses 1.1.0 results" in verdict.reason


@pytest.mark.parametrize("reported", ["containerd://2.0.0-rc.0", "containerd://2.0.0-beta.2",
                                      "containerd://2.0.0~rc1", "cri-o://1.31.0-dev"])
def test_a_pre_release_of_the_first_release_taking_1_1_0_does_not(reported):
    verdict = judge_runtime(reported, NODE)
    assert not verdict.accepts and verdict.known and "is a pre-release of" in verdict.reason, verdict


@pytest.mark.parametrize("reported", ["docker://24.0.7", "podman://4.3.1", "remote://1.0.0", "crio://1.31.0"])
def test_any_other_runtime_is_not_confirmed(reported):
    verdict = judge_runtime(reported, NODE)
    assert verdict == RuntimeVerdict(False, False, f"the runtime could not be confirmed: {reported} ({NODE}) is a "
                                                   f"runtime weft does not know to take 1.1.0 (known: containerd "
                                                   f"2.0 and later, CRI-O 1.31 and later)")


@pytest.mark.parametrize("reported,shown", [
    ("", "''"), ("containerd", "'containerd'"), ("containerd://2.1", "'containerd://2.1'"),
    ("containerd://2.1.9 ", "'containerd://2.1.9'"),  # an excerpt is stripped; the value is not
    ("containerd://2.1.9\n", "'containerd://2.1.9'"), ("Containerd://2.1.9", "'Containerd://2.1.9'"),
    ("containerd://2.1.9;rm -rf /", "'containerd://2.1.9;rm -rf /'"),
    ("containerd://２.1.9", "'containerd://２.1.9'"),
    ("containerd://1234567.0.0", "'containerd://1234567.0.0'"), ("containerd://2.1.9-" + "x" * 65, None),
    ("containerd://\x1b[31m2.1.9", "'containerd://\\x1b[31m2.1.9'"),
    (None, "None"), (7, "7"), (["containerd://2.1.9"], None),
])
def test_an_unparsable_runtime_version_is_not_confirmed_and_quoted(reported, shown):
    verdict = judge_runtime(reported, NODE)
    assert not verdict.accepts and not verdict.known
    assert verdict.reason.startswith("the runtime could not be confirmed: ")
    assert verdict.reason.endswith(f"({NODE}) is not a NAME://X.Y.Z runtime version (e.g. containerd://2.1.9)")
    if shown is not None:
        assert f"confirmed: {shown} (" in verdict.reason
    with pytest.raises(ValueError, match="is not a NAME://X.Y.Z runtime version"):
        parse_runtime(reported)


def test_a_runtime_version_is_read_into_name_release_and_suffix():
    assert parse_runtime("containerd://v2.1.9+ds1-5") == ("containerd", (2, 1, 9), "+ds1-5")
    assert str(parse_runtime("cri-o://1.31.0")) == "cri-o://1.31.0"
    assert chain_version.RUNTIMES_TAKING_PREFERRED == {"containerd": ("containerd", (2, 0, 0)),
                                                      "cri-o": ("CRI-O", (1, 31, 0))}


@pytest.mark.parametrize("value", ["1.2.0", "1.1", "", "auto", "1.0.0 "])
def test_a_forced_version_weft_does_not_know_is_refused(value):
    with pytest.raises(ValueError, match="WEFT_CNI_VERSION"):
        check_forced(value, "WEFT_CNI_VERSION")
    assert check_forced("0.4.0", "x") == "0.4.0"


def test_chain_plugins_are_each_type_then_its_ipam_once():
    conflist = {"plugins": [{"type": "weft", "ipam": {"type": "weft-ipam"}},
                            {"type": "bridge", "ipam": {"type": "weft-ipam"}},
                            {"type": "portmap"}, "junk", {"type": 7}, {"ipam": "x"}]}
    assert chain_plugins(conflist) == ["weft", "weft-ipam", "bridge", "portmap", "junk", 7, None]
    assert chain_plugins({"plugins": "x"}) == [] and chain_plugins([]) == []


# -- ask(): stand-in plugins ---------------------------------------------------------------

def plugin(directory, name, script, mode=0o755):
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(mode)
    return path


def test_a_plugin_answering_as_the_spec_says_is_read(tmp_path):
    plugin(tmp_path, "good", 'read conf; [ "$CNI_COMMAND" = VERSION ] || exit 9\n'
                             'echo \'{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}\'\n')
    assert ask("good", [str(tmp_path / "nowhere"), str(tmp_path)]) == \
        Answer("good", str(tmp_path / "good"), ("1.0.0", "1.1.0"), "")


def test_a_plugin_gets_the_version_libcni_would_send(tmp_path):
    plugin(tmp_path, "echoes", 'cat > "$0.stdin"; echo \'{"supportedVersions":["1.1.0"]}\'\n')
    assert ask("echoes", [str(tmp_path)]).supported == ("1.1.0",)
    assert json.loads((tmp_path / "echoes.stdin").read_text()) == {"cniVersion": "1.1.0"}


@pytest.mark.parametrize("name,script,mode,problem", [
    ("absent", None, 0, "is not an executable file in"),
    ("noexec", 'echo \'{"supportedVersions":["1.1.0"]}\'\n', 0o644, "is not an executable file in"),
    ("failing", 'echo \'{"code":4,"msg":"no"}\'; exit 1\n', 0o755,
     "failed VERSION with exit status 1: '{\"code\":4,\"msg\":\"no\"}'"),
    ("garbage", "printf 'hello\\033[31m world'\n", 0o755,
     "answered VERSION with something that is not JSON: 'hello\\x1b[31m world'"),
    ("nolist", 'echo \'{"supportedVersions":"1.1.0"}\'\n', 0o755, "without a list of supportedVersions"),
    ("oddlist", 'echo \'{"supportedVersions":["1.1.0", 2]}\'\n', 0o755, "without a list of supportedVersions"),
    ("spaced", 'echo \'{"supportedVersions":["1.1.0; rm -rf"]}\'\n', 0o755, "without a list of supportedVersions"),
    ("loud", "yes\n", 0o755, f"answered VERSION with more than {chain_version.ASK_LIMIT} bytes"),
])
def test_a_plugin_without_a_usable_answer_is_named_with_the_reason(tmp_path, name, script, mode, problem):
    if script is not None:
        plugin(tmp_path, name, script, mode)
    answer = ask(name, [str(tmp_path)], timeout=10)
    assert answer.supported == () and problem in answer.problem, answer
    assert choose([answer], TAKES).version == "1.0.0"


@pytest.mark.parametrize("name", ["", ".", "..", "../portmap", "a/b", None, 7])
def test_a_type_that_is_not_a_plain_name_is_not_run(tmp_path, name):
    answer = ask(name, [str(tmp_path)])
    assert answer.problem == "is not a plugin name (a plain file name)"


def test_a_plugin_that_hangs_is_killed_with_what_it_started(tmp_path):
    plugin(tmp_path, "hangs", 'sleep 60 &\necho $! > "$0.child"\nexec sleep 60\n')
    started = time.monotonic()
    answer = ask("hangs", [str(tmp_path)], timeout=0.5)
    assert answer.problem == "did not answer VERSION within 0.5s"
    assert time.monotonic() - started < 30  # a bound on the wait, not a performance figure
    child = int((tmp_path / "hangs.child").read_text())
    for _ in range(100):  # the killed child is reaped by init shortly after
        if not os.path.exists(f"/proc/{child}") or \
                open(f"/proc/{child}/stat").read().split(") ")[1].startswith("Z"):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the plugin's child {child} outlived the VERSION call")


def test_a_plugin_that_answers_but_does_not_exit_is_not_trusted(tmp_path):
    plugin(tmp_path, "lingers", 'echo \'{"supportedVersions":["1.1.0"]}\'\nexec sleep 60 >&-\n')
    answer = ask("lingers", [str(tmp_path)], timeout=0.5)
    assert answer.problem == "did not exit within 0.5s of being asked VERSION"
