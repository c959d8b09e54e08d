"""vagrant/Vagrantfile and the shell scripts of the lab and the image, checked offline.

No VM runs here: `vagrant validate` loads the Vagrantfile with Debian's vagrant; with
vagrant-libvirt installed the libvirt provider block is validated too (an unknown
setting fails), and --ignore-provider covers the VirtualBox block, whose provider
needs VBoxManage (VirtualBox is not in Debian 12)."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from lab.namespaces import Namespace

from .artifacts import CONF, REPO

VAGRANT_DIR = os.path.join(REPO, "vagrant")
SH_SCRIPTS = sorted(glob.glob(os.path.join(VAGRANT_DIR, "*.sh")))
POSIX_SCRIPTS = [os.path.join(CONF, "image", n) for n in ("weft-install", "weftd-container", "build-runtime.sh")]


def vagrant(tmp_path, *args, provider=None):
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "home"), VAGRANT_DOTFILE_PATH=str(tmp_path / "dot"),
               VAGRANT_CHECKPOINT_DISABLE="1")
    if provider:
        env["VAGRANT_DEFAULT_PROVIDER"] = provider
    return subprocess.run(["vagrant", *args], cwd=VAGRANT_DIR, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def have_vagrant():
    if shutil.which("vagrant") is None:
        pytest.fail("vagrant is not installed; `make deps` installs Debian's vagrant and vagrant-libvirt")


def test_vagrantfile_validates_with_the_libvirt_provider(have_vagrant, tmp_path):
    proc = vagrant(tmp_path, "validate", provider="libvirt")
    assert proc.returncode == 0 and "validated successfully" in proc.stdout, proc.stdout + proc.stderr
    assert not os.path.exists(os.path.join(VAGRANT_DIR, ".vagrant"))


def test_vagrantfile_validates_for_every_provider_block(have_vagrant, tmp_path):
    proc = vagrant(tmp_path, "validate", "--ignore-provider")
    assert proc.returncode == 0 and "validated successfully" in proc.stdout, proc.stdout + proc.stderr


def test_vagrantfile_declares_the_lab(have_vagrant):
    text = open(os.path.join(VAGRANT_DIR, "Vagrantfile")).read()
    assert 'config.vm.provider "virtualbox"' in text and 'config.vm.provider "libvirt"' in text
    assert "debian/bookworm64" in text
    for script in ("provision-etcd.sh", "provision-weft.sh", "smoke.sh"):
        assert f'path: "{script}"' in text and os.access(os.path.join(VAGRANT_DIR, script), os.X_OK)
    provision = open(os.path.join(VAGRANT_DIR, "provision-weft.sh")).read()
    for step in ("make deps install", "conf/weftd.service", "weftctl network set", "systemctl enable --now weftd",
                 "conf/10-weft.conflist"):
        assert step in provision


@pytest.mark.parametrize("path", SH_SCRIPTS + POSIX_SCRIPTS, ids=os.path.basename)
def test_script_parses_and_passes_shellcheck(path):
    shell = "bash" if path in SH_SCRIPTS else "sh"
    proc = subprocess.run([shell, "-n", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed (`make deps` installs it)")
    proc = subprocess.run(["shellcheck", "-s", shell, path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_pod_helper_attaches_and_detaches_a_pod(installed, tmp_path):
    """vagrant/pod.py run for real: conf/10-weft.conflist (weft + portmap) into a pod namespace,
    inside a node namespace.  Stand-ins for the VM: a subnet file written here instead of
    weftd's, and the conflist's paths pointed into a scratch directory."""
    node, pod = Namespace("wvnode"), Namespace("wvpod")
    try:
        subnet = tmp_path / "weft.env"
        subnet.write_text("WEFT_NETWORK=10.244.0.0/16\nWEFT_SUBNET=10.244.5.1/24\nWEFT_MTU=1450\n"
                          "WEFT_IPMASQ=false\n")
        conflist = json.loads(open(os.path.join(CONF, "10-weft.conflist")).read())
        conflist["plugins"][0].update(subnetFile=str(subnet), dataDir=str(tmp_path / "weft"),
                                      logFile=str(tmp_path / "weft.log"), agentSocket=str(tmp_path / "none.sock"))
        conflist["plugins"][0]["ipam"]["dataDir"] = str(tmp_path / "ipam")
        (tmp_path / "10-weft.conflist").write_text(json.dumps(conflist))
        env = dict(os.environ, POD_CONFLIST=str(tmp_path / "10-weft.conflist"),
                   POD_CNI_PATH=f"{installed}/cni:/usr/lib/cni")

        def pod_py(command):
            return node.run([sys.executable, os.path.join(VAGRANT_DIR, "pod.py"), command, pod.name],
                            check=False, env=env)

        added = pod_py("ADD")
        assert added.returncode == 0, added.stderr
        address = added.stdout.strip()
        assert address.startswith("10.244.5."), added.stdout
        eth0 = pod.ip_json("addr", "show", "dev", "eth0")[0]
        assert [a["local"] for a in eth0["addr_info"] if a["family"] == "inet"] == [address]
        assert eth0["mtu"] == 1450
        assert pod.run(["ping", "-c1", "-W2", "10.244.5.1"], check=False).returncode == 0
        deleted = pod_py("DEL")
        assert deleted.returncode == 0, deleted.stderr
        assert [e["ifname"] for e in pod.ip_json("link", "show")] == ["lo"]
    finally:
        pod.delete()
        node.delete()
