"""weftctl install-conflist: what it writes and says, against stand-in plugins that
support 1.1.0 and a runtime stated by hand (the decision itself: test_chain_version.py;
reading the Node: test_node_runtime.py; the installer with real plugins and a stand-in
API server: tests/e2e/test_install_conflist.py)."""

import json

import pytest

from cni_plugin.cli import weftctl

CONFLIST = {"cniVersion": "0.4.0", "name": "weft",
            "plugins": [{"type": "weft", "ipam": {"type": "weft-ipam"}}, {"type": "portmap"}]}


@pytest.fixture
def node(tmp_path, monkeypatch):
    for name in ("WEFT_CNI_VERSION", "WEFT_CONTAINER_RUNTIME", "NODE_NAME", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("weft", "weft-ipam", "portmap"):
        (bin_dir / name).write_text("#!/bin/sh\necho '{\"supportedVersions\": [\"1.0.0\", \"1.1.0\"]}'\n")
        (bin_dir / name).chmod(0o755)
    source = tmp_path / "source.conflist"
    source.write_text(json.dumps(CONFLIST))
    return tmp_path, bin_dir, source, tmp_path / "net.d" / "10-weft.conflist"


def install(node, *flags, runtime="containerd://2.1.9"):
    _, bin_dir, source, dest = node
    dest.parent.mkdir(exist_ok=True)
    stated = ["--runtime", runtime] if runtime else []
    return weftctl.main(["install-conflist", str(source), str(dest), "--cni-bin-dir", str(bin_dir), *stated, *flags])


def test_the_conflist_is_written_with_the_chosen_version_and_nothing_else_changed(node, capsys):
    assert install(node) == 0
    dest = node[3]
    assert json.loads(dest.read_text()) == {**CONFLIST, "cniVersion": "1.1.0"}
    out = capsys.readouterr().out
    assert (f"cniVersion 1.1.0 for {dest}: every plugin of the chain supports 1.1.0: weft, weft-ipam, portmap; "
            f"and the runtime containerd://2.1.9 (stated by --runtime) takes 1.1.0") in out
    assert f"wrote {dest}" in out and "note:" not in out
    assert install(node) == 0 and f"{dest} unchanged" in capsys.readouterr().out


def test_without_a_known_runtime_the_plugins_are_not_enough(node, capsys, monkeypatch):
    dest = node[3]
    assert install(node, runtime=None) == 0
    out = capsys.readouterr().out
    assert (f"cniVersion 1.0.0 for {dest}: not 1.1.0: the runtime could not be confirmed: no node name to look up "
            f"($NODE_NAME, or --node-name); every plugin of the chain supports 1.1.0: weft, weft-ipam, portmap\n"
            f"weftctl install-conflist: note: on a runtime that takes 1.1.0 (containerd 2.0 or later, CRI-O 1.31 or "
            f"later) state it with $WEFT_CONTAINER_RUNTIME or --runtime NAME://VERSION, or force the version with "
            f"WEFT_CNI_VERSION=1.1.0\n") in out
    assert json.loads(dest.read_text())["cniVersion"] == "1.0.0"
    # a runtime known to refuse 1.1.0 needs no note: the reason says it all
    assert install(node, runtime="containerd://1.7.13") == 0
    out = capsys.readouterr().out
    assert "not 1.1.0: the runtime containerd://1.7.13 (stated by --runtime) is older than containerd 2.0.0" in out
    assert "note:" not in out
    # the variable states it as the flag does
    monkeypatch.setenv("WEFT_CONTAINER_RUNTIME", "cri-o://1.31.0")
    assert install(node, runtime=None) == 0
    assert "the runtime cri-o://1.31.0 (stated by WEFT_CONTAINER_RUNTIME) takes 1.1.0" in capsys.readouterr().out
    assert json.loads(dest.read_text())["cniVersion"] == "1.1.0"


def test_a_stated_runtime_that_does_not_parse_fails_and_nothing_is_written(node, capsys):
    assert install(node, runtime="containerd 2.1.9") == 2
    assert ("weftctl install-conflist: --runtime: 'containerd 2.1.9' is not a NAME://X.Y.Z runtime version "
            "(e.g. containerd://2.1.9)") in capsys.readouterr().err
    assert not node[3].exists()


def test_the_flag_wins_over_the_variable_and_both_are_checked(node, capsys, monkeypatch):
    monkeypatch.setenv("WEFT_CNI_VERSION", "1.0.0")
    assert install(node) == 0
    assert f"cniVersion 1.0.0 for {node[3]}: forced by WEFT_CNI_VERSION\n" in capsys.readouterr().out
    assert json.loads(node[3].read_text())["cniVersion"] == "1.0.0"
    assert install(node, "--cni-version", "0.4.0") == 0
    assert "forced by --cni-version" in capsys.readouterr().out
    assert json.loads(node[3].read_text())["cniVersion"] == "0.4.0"
    assert install(node, "--cni-version", "auto") == 0
    assert json.loads(node[3].read_text())["cniVersion"] == "1.1.0"
    assert install(node, "--cni-version", "2.0.0") == 2
    assert "--cni-version '2.0.0' is not a CNI version weft knows" in capsys.readouterr().err
    assert json.loads(node[3].read_text())["cniVersion"] == "1.1.0"


@pytest.mark.parametrize("text,why", [
    ("{not json", "refused: Expecting property name"),
    ('{"name": "weft", "plugins": []}', "refused: it is not a conflist (a JSON object with a non-empty plugins list)"),
    ("[1]", "refused: it is not a conflist"),
])
def test_a_source_that_is_no_conflist_is_refused_and_nothing_written(node, capsys, text, why):
    node[2].write_text(text)
    assert install(node) == 2
    assert f"{node[2]} {why}" in capsys.readouterr().err
    assert not node[3].exists()


def test_an_unreadable_source_or_unwritable_destination_is_named(node, capsys):
    tmp_path, bin_dir, source, dest = node
    missing = tmp_path / "missing.conflist"
    assert weftctl.main(["install-conflist", str(missing), str(dest), "--cni-bin-dir", str(bin_dir)]) == 2
    assert f"cannot read {missing}: No such file or directory" in capsys.readouterr().err
    nowhere = tmp_path / "no-such-dir" / "10-weft.conflist"
    assert weftctl.main(["install-conflist", str(source), str(nowhere), "--cni-bin-dir", str(bin_dir)]) == 3
    assert f"cannot write {nowhere}: No such file or directory" in capsys.readouterr().err
