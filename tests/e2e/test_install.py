"""`make install` puts working launchers where runtimes look, and is safe to repeat."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def install(target):
    return subprocess.run(["make", "-s", "-C", REPO, "install", f"VENV={sys.prefix}",
                           f"CNI_BIN_DIR={target}/cni", f"BIN_DIR={target}/bin"],
                          capture_output=True, text=True, timeout=300)


def test_install_twice_gives_working_isolated_launchers(tmp_path):
    for _ in range(2):
        proc = install(tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "cni")) == ["weft", "weft-ipam"]
    assert sorted(os.listdir(tmp_path / "bin")) == ["weftctl", "weftd"]
    # the caller's PYTHONPATH cannot change what runs (-I)
    env = {"CNI_COMMAND": "VERSION", "PYTHONPATH": str(tmp_path / "nowhere"), "PATH": os.environ["PATH"]}
    for plugin in ("weft", "weft-ipam"):
        exe = tmp_path / "cni" / plugin
        assert os.access(exe, os.X_OK)
        assert exe.read_text().splitlines()[0] == f"#!{sys.prefix}/bin/python -IS"
        out = subprocess.run([str(exe)], input=b'{"cniVersion": "0.4.0"}', env=env,
                             capture_output=True, timeout=30)
        assert out.returncode == 0 and json.loads(out.stdout)["cniVersion"] == "0.4.0"
    for tool in ("weftd", "weftctl"):
        assert (tmp_path / "bin" / tool).read_text().splitlines()[0] == f"#!{sys.prefix}/bin/python -I"
    usage = subprocess.run([str(tmp_path / "bin" / "weftctl"), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "whois" in usage.stdout


def test_the_dev_venv_is_the_one_install_that_runs_the_checkout_in_place(installed):
    """The dev venv (.venv, what the `installed` fixture uses) holds an editable install
    on purpose, so tests run the code being edited: its plugin launchers put the
    checkout on sys.path.  Every other venv gets a real install (tests below)."""
    checkout = os.path.realpath(REPO)
    assert os.path.realpath(sys.prefix) == os.path.join(checkout, ".venv")
    assert f'sys.path.insert(0, "{checkout}")' in (installed / "cni" / "weft").read_text()


# -- a fresh venv, as an operator installs weft ------------------------------------------

# what `make install` reads from a checkout; a copy of it can be changed and removed
CHECKOUT_PARTS = ("Makefile", "pyproject.toml", "setup.cfg", "README.md", "bin", "scripts", "cni_plugin")


def make_install(checkout, target, cwd):
    """`make -C CHECKOUT install` from another directory, into TARGET/venv (not made yet)."""
    proc = subprocess.run(["make", "-s", "-C", str(checkout), "install", f"VENV={target}/venv",
                           f"CNI_BIN_DIR={target}/cni", f"BIN_DIR={target}/bin"],
                          cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def isolated(target, code, cwd):
    """Ask the installed venv's interpreter, as its launchers run it (-I)."""
    proc = subprocess.run([f"{target}/venv/bin/python", "-I", "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def copy_checkout(dest):
    import shutil

    dest.mkdir()
    for part in CHECKOUT_PARTS:
        source = os.path.join(REPO, part)
        if os.path.isdir(source):
            shutil.copytree(source, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / part)
    return dest


def launcher_lines(target):
    return {name: (target / where / name).read_text()
            for where, names in (("cni", ("weft", "weft-ipam")), ("bin", ("weftd", "weftctl")))
            for name in names}


def test_make_install_into_a_new_venv_from_another_directory_works(tmp_path, netns):
    from lab.cni import invoke

    node, pod = netns("winode"), netns("wipod")

    target, elsewhere = tmp_path / "opt", tmp_path / "cwd"
    elsewhere.mkdir()
    make_install(REPO, target, cwd=elsewhere)

    # weft and its dependencies are in the venv itself, not found through the checkout
    site = isolated(target, "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=REPO)
    assert site.startswith(f"{target}/venv/")
    for module in ("cni_plugin", "pyroute2", "grpc", "google.protobuf", "prometheus_client"):
        where = isolated(target, f"import importlib.util as u; print(u.find_spec('{module}').origin)", cwd=REPO)
        assert where.startswith(site + "/"), (module, where)
    # the etcd stubs ship generated (nothing to build), with their schema, and load under
    # protobuf's C runtime; the etcd3 package is no dependency any more
    stubs = "from cni_plugin.subnet.etcd_api import etcd_pb2_grpc, etcd_pb2; " \
            "from google.protobuf.internal import api_implementation as a; print(a.Type(), etcd_pb2.__file__)"
    runtime, where = isolated(target, stubs, cwd=REPO).split()
    assert runtime == "upb" and where.startswith(site + "/")
    assert os.path.exists(os.path.join(os.path.dirname(where), "etcd.proto"))
    assert isolated(target, "import importlib.util as u; print(u.find_spec('etcd3'))", cwd=REPO) == "None"
    for name, text in launcher_lines(target).items():
        assert REPO not in text, f"{name} points into the checkout"
        assert text.splitlines()[0].startswith(f"#!{target}/venv/bin/python -I"), name
    assert f'sys.path.insert(0, "{site}")' in (target / "cni" / "weft").read_text()

    # the tools start, from the checkout as the current directory too
    for tool, word in (("weftd", "--etcd-endpoints"), ("weftctl", "whois")):
        usage = subprocess.run([f"{target}/bin/{tool}", "--help"], cwd=REPO, capture_output=True, text=True,
                               timeout=60)
        assert usage.returncode == 0 and word in usage.stdout, (tool, usage.stderr)

    cni_path = f"{target}/cni"      # weft-ipam from this install, nothing else
    version = invoke(f"{cni_path}/weft", "VERSION", {"cniVersion": "1.0.0"}, cni_path=cni_path)
    assert version.code == 0 and "1.0.0" in version.json["supportedVersions"], str(version)

    # one real attachment through the installed launchers, standalone (no agent listens)
    conf = {"cniVersion": "1.0.0", "name": "winstall", "type": "weft", "bridge": "cbi0",
            "dataDir": f"{tmp_path}/weft", "logFile": f"{tmp_path}/weft.log",
            "agentSocket": f"{tmp_path}/no-agent.sock",
            "ipam": {"type": "weft-ipam", "dataDir": f"{tmp_path}/ipam", "ranges": [[{"subnet": "10.23.0.0/24"}]]}}
    call = dict(container_id="install-check", netns=pod.path, ifname="eth0", cni_path=cni_path, node=node)
    added = invoke(f"{cni_path}/weft", "ADD", conf, **call)
    assert added.code == 0, str(added)
    [ip] = added.json["ips"]
    eth0 = pod.ip_json("addr", "show", "eth0")[0]
    assert [f"{a['local']}/{a['prefixlen']}" for a in eth0["addr_info"] if a["family"] == "inet"] == [ip["address"]]
    assert len(node.ip_json("link", "show", "type", "veth")) == 1
    checked = invoke(f"{cni_path}/weft", "CHECK", {**conf, "prevResult": added.json}, **call)
    assert checked.code == 0, str(checked)
    deleted = invoke(f"{cni_path}/weft", "DEL", {**conf, "prevResult": added.json}, **call)
    assert deleted.code == 0, str(deleted)
    assert node.ip_json("link", "show", "type", "veth") == []
    assert not [link for link in pod.ip_json("link", "show") if link["ifname"] == "eth0"]
    store = tmp_path / "ipam" / "winstall"
    assert not (store / ip["address"].split("/")[0]).exists()


def test_a_second_install_upgrades_in_place_and_needs_no_checkout(tmp_path):
    checkout = copy_checkout(tmp_path / "src")
    (tmp_path / "src" / "cni_plugin" / "old_module.py").write_text("GONE_IN_THE_NEXT_RELEASE = 1\n")
    target = tmp_path / "opt"
    make_install(checkout, target, cwd=tmp_path)
    first = launcher_lines(target)
    assert isolated(target, "import cni_plugin.old_module, cni_plugin; print(cni_plugin.__version__)", cwd="/")

    # the next release: a new version, one module fewer
    init = checkout / "cni_plugin" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9.9.9+next.'))
    (checkout / "cni_plugin" / "old_module.py").unlink()
    make_install(checkout, target, cwd=tmp_path)
    assert launcher_lines(target) == first
    version = isolated(target, "import cni_plugin; print(cni_plugin.__version__)", cwd="/")
    assert version.startswith("9.9.9+next."), version
    gone = subprocess.run([f"{target}/venv/bin/python", "-I", "-c", "import cni_plugin.old_module"], cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode != 0 and "No module named 'cni_plugin.old_module'" in gone.stderr

    # nothing installed refers to the checkout: it can go away
    import shutil

    shutil.rmtree(checkout)
    usage = subprocess.run([f"{target}/bin/weftctl", "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "whois" in usage.stdout, usage.stderr
    out = subprocess.run([f"{target}/cni/weft"], input=b'{"cniVersion": "1.0.0"}',
                         env={"CNI_COMMAND": "VERSION", "PATH": os.environ["PATH"]}, capture_output=True, timeout=30)
    assert out.returncode == 0 and json.loads(out.stdout)["cniVersion"] == "1.0.0", out.stderr
