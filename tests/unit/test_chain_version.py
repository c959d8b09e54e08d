"""The conflist's cniVersion from the plugins' VERSION answers (cni/chain_version.py):
the decision as a pure function, and ask() against stand-in plugins that misbehave the
ways a real one can (missing, hanging, loud, failing, answering garbage)."""

import json
import os
import time

import pytest

from cni_plugin.cni import chain_version
from cni_plugin.cni.chain_version import Answer, ask, chain_plugins, check_forced, choose

OLD = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0")   # plugins 1.1 (Debian 12)
NEW = OLD + ("1.1.0",)                                          # plugins 1.9


def answered(name, supported):
    return Answer(name, f"/opt/cni/bin/{name}", tuple(supported))


def test_every_plugin_supporting_1_1_0_gives_1_1_0():
    choice = choose([answered("weft", NEW), answered("weft-ipam", NEW), answered("portmap", NEW)])
    assert choice.version == "1.1.0"
    assert "weft, weft-ipam, portmap" in choice.reason


def test_one_older_plugin_holds_the_chain_at_1_0_0_and_is_named():
    choice = choose([answered("weft", NEW), answered("weft-ipam", NEW), answered("portmap", OLD)])
    assert choice.version == "1.0.0"
    assert "portmap (/opt/cni/bin/portmap) supports 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0" in choice.reason
    assert "weft " not in choice.reason and "lacks" not in choice.reason


def test_a_plugin_without_an_answer_counts_as_not_1_1_0():
    missing = Answer("bandwidth", "/opt/cni/bin", (), "is not an executable file in /opt/cni/bin")
    choice = choose([answered("weft", NEW), missing])
    assert choice == ("1.0.0", "not 1.1.0, held back by: bandwidth (/opt/cni/bin) is not an executable "
                               "file in /opt/cni/bin")


def test_a_plugin_lacking_1_0_0_too_is_reported_as_fatal_for_the_chain():
    choice = choose([answered("weft", NEW), answered("flannel", ("0.3.0", "0.3.1", "0.4.0"))])
    assert choice.version == "1.0.0"
    assert "flannel lacks 1.0.0 too, so the runtime will refuse the chain" in choice.reason


def test_no_plugin_to_ask_gives_1_0_0():
    assert choose([]).version == "1.0.0"


def test_a_forced_version_wins_and_names_the_plugins_that_lack_it():
    choice = choose([answered("weft", NEW), answered("portmap", OLD)], "1.1.0", "WEFT_CNI_VERSION")
    assert choice.version == "1.1.0"
    assert choice.reason.startswith("forced by WEFT_CNI_VERSION; the runtime will refuse the chain")
    assert "portmap (/opt/cni/bin/portmap)" in choice.reason
    assert choose([answered("portmap", NEW)], "1.0.0", "--cni-version") == ("1.0.0", "forced by --cni-version")


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
    assert choose([answer]).version == "1.0.0"


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
