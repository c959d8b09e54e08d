"""The README and docs/ as an operator's manual that cannot drift from the code.

The corpus is README.md followed by every docs/*.md: blocks, tables and headings are
found wherever they live, each heading exactly once.

- Blocks marked `<!-- tested -->` before a ```sh fence run: here (weftd, weftctl, tail
  against a real etcd with TLS and a real agent in a node namespace), or in the test that
  RUN_ELSEWHERE names.  What stands in for the operator's machine is listed by each test
  (etcd host names, certificate files, /var paths, the example IP).
- Blocks marked `<!-- checked -->` need what this machine lacks (systemd as PID 1, a
  Kubernetes cluster, kind, VMs): every command must be accepted as written, and each one
  is checked by something: weftd/weftctl arguments parse with their real argparse parsers
  (and a --config JSON is a valid network config), make targets and variables exist, every
  repository path exists, kubectl names objects the manifests define, kind's --name is the
  kind config's, sed substitutions find their text, vagrant names real machines and
  provisioners, systemctl/sysctl act on what the block installed.
  `<!-- tested: usage -->` blocks are synopses: subcommands and flags exist.
- The configuration tables list exactly the keys and flags the code defines.
- docs/architecture.svg is what docs/architecture.py draws; `weftctl graph` draws a real
  cluster from a real etcd.
"""

import inspect
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml

from cni_plugin.plugin import config as plugin_config
from cni_plugin.agent import options
from cni_plugin.cli import weftctl
from cni_plugin.ipam import config as ipam_config
from cni_plugin.subnet import subnet_file
from cni_plugin import backends
from cni_plugin.backends.vxlan import VxlanData
from cni_plugin.subnet.lease import Lease, NetworkConfig

from lab import multus as lab_multus
from lab.cluster import Cluster
from lab.etcd import free_port

from . import artifacts
from .artifacts import CONF, KUBE, REPO

README = open(os.path.join(REPO, "README.md")).read()
DOC_PAGES = sorted(f"docs/{name}" for name in os.listdir(os.path.join(REPO, "docs")) if name.endswith(".md"))
PAGES = {path: open(os.path.join(REPO, path)).read() for path in ["README.md", *DOC_PAGES]}
DOCS = "\n".join(PAGES.values())  # every page starts with "# ": a section never runs into the next page
MAKEFILE = open(os.path.join(REPO, "Makefile")).read()
REPO_PATH = re.compile(r"(?:^|[=\s])((?:conf|vagrant|docs|scripts|tests|bin)/[\w./-]*)")


def readme_blocks(marker="tested"):
    return re.findall(re.escape(f"<!-- {marker} -->") + r"\n```sh\n(.*?)```", DOCS, re.S)


def readme_block(first_line: str) -> str:
    """The one tested block that starts with first_line."""
    (block,) = [b for b in readme_blocks() if b.startswith(first_line)]
    return block


def section(title: str) -> str:
    assert DOCS.count(title) == 1, f"{title!r} is in README.md + docs/ {DOCS.count(title)} times"
    start = DOCS.index(title)
    end = DOCS.find("\n#", start + len(title))
    return DOCS[start:end if end > 0 else len(DOCS)]


def table_rows(text: str) -> list:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


def ticks(cell: str) -> list:
    return re.findall(r"`([^`]+)`", cell)


# -- commands -----------------------------------------------------------------------------

def commands(blocks):
    """(block number, cwd relative to the repo, argv) of every command of the blocks."""
    out = []
    for number, block in enumerate(blocks):
        cwd = ""
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            current = []
            for token in tokens + ["&&"]:
                if token in ("&&", "||", "|", ";"):
                    if current:
                        if current[0] == "cd":
                            cwd = os.path.normpath(os.path.join(cwd, current[1]))
                        else:
                            out.append((number, cwd, current))
                    current = []
                elif token.startswith(">"):
                    current.append(token)
                else:
                    current.append(token)
    return out


COMMANDS = commands(readme_blocks("checked"))

# Tested blocks run by another test: first line -> (file, test function, what it runs).
RUN_ELSEWHERE = {
    "make demo": ("tests/e2e/test_demo.py", "test_make_demo", '"demo"'),
    "make install": ("tests/e2e/test_install.py", "install",  # into scratch dirs, not /opt or /usr
                     'f"CNI_BIN_DIR={target}/cni"'),
    "docker build -f conf/image/Containerfile": (  # BASE: a local Debian 12 rootfs (no registry here)
        "tests/deploy/images.py", "weft_image", '"--build-arg", f"BASE={base}"'),
}
# `make test` is the suite itself: .ci/run runs it on every CI machine.
RUN_HERE = ("weftctl network set weft --config", "weftctl status", "weftctl network set weft2",
            "weftctl graph --ipam-data-dir")


# Tested JSON blocks show a shipped file as it is: {path: (the path the lab module reads,
# that module, its loader, the tests that run the file through that loader)}.
JSON_SHOWN = {"conf/multus/00-multus.conflist": (lab_multus.MULTUS_CONFLIST, "lab.multus", "node_conflist",
                                                 ["tests/cluster/test_multus.py",
                                                  "tests/e2e/test_containerd_multus.py"])}


def test_every_tested_json_block_is_a_shipped_file_the_suite_runs():
    blocks = re.findall(r"<!-- tested -->\n```json\n(.*?)```", DOCS, re.S)
    assert blocks
    for block in blocks:
        shown = json.loads(block)
        paths = [p for p in JSON_SHOWN if artifacts.load_json(os.path.join(REPO, p)) == shown]
        assert paths, f"a tested JSON block is no longer a shipped file as it stands: {block[:120]}"
        read, module, loader, tests = JSON_SHOWN[paths[0]]
        assert read == os.path.join(REPO, paths[0]), f"{module} reads {read}"
        for test in tests:
            text = open(os.path.join(REPO, test)).read()
            assert f"from {module} import" in text and f"{loader}(" in text, f"{test} no longer runs {paths[0]}"


def test_readme_has_readme_blocks():
    # as many as the README held before the reference moved to docs/: none may be lost on the way
    assert len(readme_blocks()) >= 8 and len(readme_blocks("checked")) >= 10 and len(COMMANDS) >= 45
    assert len(readme_blocks("tested: usage")) >= 1


def test_readme_is_a_front_door_to_every_docs_page():
    assert README.count("\n") <= 420, "README.md: at most ~400 lines; reference material goes to docs/"
    assert DOC_PAGES
    for path in DOC_PAGES:
        assert f"]({path})" in README, f"README.md does not link {path}"
        assert PAGES[path].startswith("# "), f"{path} starts with its title"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_links_between_the_pages_resolve():
    links = 0
    for path, text in PAGES.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"\w+://", target):
                continue
            file, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            assert os.path.exists(os.path.join(REPO, resolved)), f"{path}: {target}"
            if anchor:
                assert anchor in _anchors(PAGES[resolved]), f"{path}: {target}: no such heading"
            links += 1
    assert links >= 20


def test_every_tested_block_runs_in_the_suite():
    for block in readme_blocks():
        first = block.splitlines()[0]
        if any(first.startswith(key) for key in RUN_HERE):
            continue
        key = next((k for k in RUN_ELSEWHERE if first.startswith(k)), None)
        assert key, f"no test runs the README block starting {first!r}: run it, or mark it <!-- checked -->"
        path, function, runs = RUN_ELSEWHERE[key]
        source = open(os.path.join(REPO, path)).read()
        body = re.search(rf"^def {function}\(.*?(?=^\S)", source + "\nEND", re.S | re.M)
        assert body and runs in body.group(0), f"{path}::{function} no longer runs {key!r}"
        if first.startswith("make demo"):
            assert "make test" in open(os.path.join(REPO, ".ci", "run")).read()


def _make_targets():
    return set(re.findall(r"^([\w-]+):", MAKEFILE, re.M))


def _check_make(argv):
    variables = set(re.findall(r"^(\w+)\s*[?:]?=", MAKEFILE, re.M))
    for arg in argv[1:]:
        if "=" in arg:
            assert arg.split("=")[0] in variables, f"make variable {arg}"
        else:
            assert arg in _make_targets(), f"make target {arg}"


def _check_weftctl(argv):
    try:
        args = weftctl._parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"weftctl rejects: {' '.join(argv)}")
    if getattr(args, "config", None) and args.config.lstrip().startswith("{"):
        NetworkConfig.parse(args.name, args.config)


def _check_weftd(argv):
    try:
        options.parse(argv[1:])
    except SystemExit:
        pytest.fail(f"weftd rejects: {' '.join(argv)}")


def _check_vagrant(argv):
    vagrantfile = open(os.path.join(REPO, "vagrant", "Vagrantfile")).read()
    machines = re.findall(r'"(\w+)" => \d+', vagrantfile)
    provisioners = re.findall(r'provision "(\w+)"', vagrantfile)
    if argv[1] == "provision":
        assert argv[2] in machines
        assert argv[argv.index("--provision-with") + 1] in provisioners


def _block_of(number) -> list:
    return [argv for n, _, argv in COMMANDS if n == number]


def _kube_objects() -> set:
    return {(doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"])
            for path in artifacts.kube_files() for doc in artifacts.resources(path) if "metadata" in doc}


def _check_kubectl(number, argv) -> bool:
    namespace = argv[argv.index("-n") + 1] if "-n" in argv else None
    if namespace:
        at = argv.index("-n")
        argv = argv[:at] + argv[at + 2:]
    if argv[1:3] == ["apply", "-f"]:
        assert artifacts.resources(os.path.join(REPO, argv[3])), argv
    elif argv[1:3] == ["apply", "-k"]:
        target = argv[3]
        if target.startswith("/tmp/"):  # a copy the block made with cp -r
            source = next(a[-2] for a in _block_of(number) if a[:2] == ["cp", "-r"] and a[-1] == target)
            target = source
        assert os.path.exists(os.path.join(REPO, target, "kustomization.yaml"))
    elif argv[1:4] == ["create", "secret", "generic"]:
        # the Secret's keys are the files the DaemonSet's containers read from its mount
        volumes = artifacts.resource("DaemonSet")["spec"]["template"]["spec"]["volumes"]
        (volume,) = [v["name"] for v in volumes if v.get("secret", {}).get("secretName") == argv[4]]
        mount = next(m["mountPath"] for m in artifacts.daemonset_container("weftd")["volumeMounts"]
                     if m["name"] == volume)
        manifest = open(os.path.join(KUBE, "03-daemonset.yaml")).read()
        keys = {a.split("=")[1] for a in argv if a.startswith("--from-file=")}
        assert keys and all(f"{mount}/{key}" in manifest for key in keys), (keys, mount)
    elif argv[1:3] == ["rollout", "status"]:
        kind, name = argv[3].split("/")
        assert ("DaemonSet", namespace, name) in _kube_objects() and kind == "daemonset", argv
    elif argv[1] == "run":
        assert any(a.startswith("--image=") for a in argv), argv
    elif argv[1] == "exec":
        created = {a[2] for a in _block_of(number) if a[:2] == ["kubectl", "run"]}
        assert argv[2] in created, f"{argv[2]} is not created in the block"
    else:
        return False
    return True


@pytest.mark.parametrize("number,cwd,argv", COMMANDS,
                         ids=[f"{n}:{' '.join(a)[:50]}" for n, _, a in COMMANDS])
def test_readme_command(number, cwd, argv):
    program = argv[0]
    checked = []
    for arg in argv:
        for path in REPO_PATH.findall(arg):
            assert os.path.exists(os.path.join(REPO, cwd, path.rstrip("."))), f"{path} (in {argv})"
            checked.append(path)
        if arg.startswith("WEFTD_ARGS="):
            _check_weftd(["weftd", *shlex.split(arg.split("=", 1)[1].strip("\""))])
            unit = open(os.path.join(CONF, "weftd.service")).read()
            target = argv[argv.index(arg) + 1].lstrip(">").strip() or argv[argv.index(arg) + 2]
            assert f"EnvironmentFile=-{target}" in unit or f"EnvironmentFile={target}" in unit, target
            checked.append(arg)
    block = _block_of(number)
    installed = [a[-1] for a in block if a[0] == "cp"]
    if program == "make":
        _check_make(argv)
    elif program == "weftctl":
        _check_weftctl(argv)
    elif program == "weftd":
        _check_weftd(argv)
    elif program == "vagrant":
        assert cwd == "vagrant", "vagrant commands run in vagrant/"
        _check_vagrant(argv)
    elif program == "kubectl":
        assert _check_kubectl(number, argv), f"no check for {argv}"
    elif program == "kind" and argv[1:3] == ["create", "cluster"]:
        kind = yaml.safe_load(open(os.path.join(REPO, argv[argv.index("--config") + 1])))
        names = [a for i, a in enumerate(argv) if i and argv[i - 1] == "--name"]
        assert not names or names == [kind["name"]]
    elif program == "kind" and "--name" in argv:
        kind = yaml.safe_load(open(os.path.join(CONF, "kind-config.yaml")))
        assert argv[argv.index("--name") + 1] == kind["name"]
        assert any(a.startswith(f"{kind['name']}-control-plane") for c in COMMANDS for a in c[2])
        assert argv[argv.index("docker-image") + 1] == _daemonset_image()
    elif program == "sed":
        expression = next(a for a in argv[1:] if a.startswith("s|"))
        old = expression.split("|")[1]
        assert any(old in open(os.path.join(KUBE, f)).read() for f in os.listdir(KUBE)), old
    elif program == "docker" and argv[1] == "cp":
        kind = yaml.safe_load(open(os.path.join(CONF, "kind-config.yaml")))
        assert argv[2].startswith(f"{kind['name']}-control-plane:")
    elif program == "docker" and argv[1] == "build":
        assert argv[argv.index("-t") + 1] == _daemonset_image(), "the image the DaemonSet runs"
    elif program == "systemctl":
        units = {os.path.basename(p) for p in installed if p.startswith("/etc/systemd/system/")}
        assert units, "systemctl in a block that installs no unit"
        if "enable" in argv:
            assert argv[-1] + ".service" in units, argv
    elif program == "sysctl":
        assert argv[1:] == ["--system"] and "/etc/sysctl.d/" in installed, (argv, installed)
    elif program in ("cp", "echo"):
        assert checked, f"{program} of nothing from the repository: {argv}"
    else:
        pytest.fail(f"nothing checks {argv}: add a check, or drop the command from the block")


def _daemonset_image() -> str:
    return artifacts.daemonset_container("weftd")["image"]


def test_readme_usage_lines_name_real_subcommands_and_flags():
    parser = weftctl._parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    lines = [line.split("  #")[0] for block in readme_blocks("tested: usage") for line in block.splitlines()]
    assert lines
    for line in lines:
        words = line.split()
        assert words[0] == "weftctl" and words[1] in subparsers, line
        sub = subparsers[words[1]]
        if words[1] == "network":
            sub = next(a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction").choices[words[2]]
        known = {o for a in sub._actions for o in a.option_strings}
        for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", line):
            assert flag in known, f"{flag} in {line!r}"
    assert {line.split()[1] for line in lines} == set(subparsers)


# -- tables -------------------------------------------------------------------------------

def test_weft_netconf_table_lists_exactly_the_keys_plugin_config_reads():
    rows = table_rows(section("### `weft` (the main plugin)"))
    documented = {ticks(row[0])[0]: row for row in rows if "." not in row[0] and " " not in ticks(row[0])[0]}
    code = set(re.findall(r'opt\("(\w+)"', inspect.getsource(plugin_config.load))) | {"ipam"}
    assert set(documented) == code
    defaults = {"bridge": plugin_config.DEFAULT_BRIDGE, "dataDir": plugin_config.DEFAULT_DATA_DIR,
                "agentSocket": plugin_config.DEFAULT_AGENT_SOCKET, "logFile": plugin_config.DEFAULT_LOG_FILE}
    for key, value in defaults.items():
        assert value in ticks(documented[key][1]), key


def test_weftd_flag_table_lists_exactly_the_parser_flags():
    rows = table_rows(section("## weftd, the node agent"))
    documented = {}
    for row in rows:
        for flag in ticks(row[0]):
            documented[flag.split()[0]] = row
    parser = options.parser()
    flags = {o: a for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    assert set(documented) == set(flags)
    for flag, action in flags.items():
        shown = ticks(documented[flag][1])
        if action.default is None or len(ticks(documented[flag][0])) != 1 or not shown:
            continue
        if isinstance(action.default, (int, float)):
            assert float(shown[0]) == float(action.default), flag
        else:
            assert shown[0] == action.default, flag


def test_network_config_table_lists_exactly_the_keys_the_parser_reads():
    rows = table_rows(section("### Network config"))
    documented = {key for row in rows for key in ticks(row[0])}
    source = inspect.getsource(NetworkConfig.from_dict)
    code = set(re.findall(r'(?<![.\w])(?:get|net|bound)\("(\w+)"', source))
    code |= set(re.findall(r'\braw\.get\("(\w+)"', source))  # keys with a parser of their own
    code = {k for k in code if k != "Backend"} | {"Backend.Type"}
    for name in backends.names():
        backend = backends.get(name)
        # the keys each backend's parser reads, from its source, must be the ones it declares
        read = set(re.findall(r'(?:section\.get|_int_in\(section,) ?\(?"(\w+)"',
                              inspect.getsource(inspect.getmodule(backend))))
        assert read == set(backend.CONFIG_KEYS), name
        code |= {f"Backend.{k}" for k in read}
    assert documented == code


def test_lease_and_subnet_file_keys_match_the_code():
    text = section("### Leases")
    shown = set(re.findall(r"\w+", re.search(r"holds `(\{.*?\})`", text, re.S).group(1)))
    lease = Lease(subnet=ipaddress.IPv4Network("10.244.3.0/24"), public_ip=ipaddress.IPv4Address("192.0.2.9"),
                  node_name="n", backend_data=VxlanData(1, "02:00:00:00:00:01"),
                  ipv6_subnet=ipaddress.IPv6Network("fd00:10:244:3::/64"),
                  public_ipv6=ipaddress.IPv6Address("2001:db8::9"), node_id="0" * 32)
    value = json.loads(lease.to_json())
    assert shown == set(value) | set(value["BackendData"])
    block = re.search(r"### Subnet file.*?```\n(.*?)```", section("### Subnet file"), re.S).group(1)
    documented = set(re.findall(r"^(WEFT_\w+)=", block, re.M))
    rendered = subnet_file.SubnetLease(
        network=ipaddress.IPv4Network("10.244.0.0/16"), subnet=ipaddress.IPv4Interface("10.244.3.1/24"),
        mtu=1450, ipmasq=True, ipv6_network=ipaddress.IPv6Network("fd00:10:244::/48"),
        ipv6_subnet=ipaddress.IPv6Interface("fd00:10:244:3::1/64"), ipv4_ipmasq=True, ipv6_ipmasq=False).render()
    assert documented == set(re.findall(r"^(WEFT_\w+)=", rendered, re.M))


def test_weft_ipam_keys_match_its_config_parser():
    paragraph = section("### `weft-ipam`").split("\n\n")[1]
    documented = {k for k in ticks(paragraph) if re.fullmatch(r"[a-zA-Z]+", k)} - {"dns"}  # a result field
    source = inspect.getsource(ipam_config)
    assert documented <= set(re.findall(r'"(\w+)"', source))
    assert set(re.findall(r'typed\(ipam, "(\w+)"', source)) <= documented


# -- pictures ---------------------------------------------------------------------------

def test_architecture_svg_is_regenerated_from_its_source():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "docs", "architecture.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, "docs/architecture.svg is stale: run python docs/architecture.py"
    ET.parse(os.path.join(REPO, "docs", "architecture.svg"))
    assert "](docs/architecture.svg)" in README


def test_weftctl_graph_draws_a_real_cluster(installed, tmp_path):
    from cni_plugin.ipam import history
    from cni_plugin.subnet.etcd_registry import EtcdRegistry
    from lab.etcd import EtcdServer

    etcd = EtcdServer(tmp_path / "etcd")
    etcd.start()
    try:
        with EtcdRegistry([etcd.endpoint]) as registry:
            registry.put_network_config("weft", json.dumps({"Network": "10.244.0.0/16"}))
            registry.put_network_config("weft2", json.dumps({"Network": "10.245.0.0/16",
                                                             "Backend": {"VNI": 2}}))
            for index in (1, 2):
                for network, vni, second in (("weft", 1, 244), ("weft2", 2, 245)):
                    lease = Lease(subnet=ipaddress.IPv4Network(f"10.{second}.{index}.0/24"),
                                  public_ip=ipaddress.IPv4Address(f"192.0.2.{index}"), node_name=f"node{index}",
                                  backend_data=VxlanData(vni, f"02:00:00:00:{vni:02x}:{index:02x}"))
                    assert registry.create_lease(network, lease.key, lease.to_json(), 600)
        store = tmp_path / "ipam"
        (store / "weft").mkdir(parents=True)
        history.append(str(store / "weft" / "history.jsonl"), [
            history.entry("allocate", "10.244.1.5", "weft", "c1", "eth0", ("default", "web-0")),
            history.entry("allocate", "10.244.2.6", "weft", "c2", "eth0", ("default", "web-1")),
            history.entry("allocate", "10.244.2.7", "weft", "c3", "eth0", ("default", "gone")),
            history.entry("release", "10.244.2.7", "weft", "c3", "eth0", ("default", "gone"), reason="del"),
        ])
        out = tmp_path / "cluster.svg"
        proc = subprocess.run([f"{installed}/bin/weftctl", "graph", "--etcd-endpoints", etcd.endpoint,
                               "--ipam-data-dir", str(store), "-o", str(out)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr
        texts = " ".join(" ".join((t.text or "").split())
                         for t in ET.parse(out).iter("{http://www.w3.org/2000/svg}text"))
        for expected in ("node1", "node2", "192.0.2.1", "weft 10.244.1.0/24", "weft2 10.245.2.0/24",
                         "weft.2 VTEP 02:00:00:00:02:01", "default/web-0", "10.244.1.5", "default/web-1",
                         "10.245.0.0/16 (vxlan, VNI 2)", etcd.endpoint):
            assert expected in texts, expected
        assert "default/gone" not in texts
        only = subprocess.run([f"{installed}/bin/weftctl", "graph", "weft2", "--etcd-endpoints", etcd.endpoint],
                              capture_output=True, text=True, timeout=60)
        assert only.returncode == 0 and "10.244.1.0/24" not in only.stdout and "10.245.1.0/24" in only.stdout
    finally:
        etcd.cleanup()


# -- tested blocks that run here: a real agent on a real etcd with TLS ------------------------

@pytest.fixture(scope="module")
def readme_node(installed, tmp_path_factory):
    """The README's weftd block run for real in a node namespace.  Stand-ins for the
    operator's machine: etcd1 is a port nobody listens on (so the agent fails over to the
    next endpoint), etcd2 is a real TLS etcd; ca.crt/node.crt/node.key are that etcd's
    files in the working directory; weftctl gets that etcd's --etcd-* flags; weftd gets the
    scratch paths and node identity every agent of the lab gets (run/state/ipam dirs,
    --node-name, --public-ip, --metrics-addr)."""
    work = tmp_path_factory.mktemp("readme")
    cluster = Cluster(work / "cluster", installed, etcd_tls=True)
    try:
        node = cluster.add_node()
        tls = cluster.etcd.client_kwargs()
        for name, source in (("ca.crt", tls["cafile"]), ("node.crt", tls["certfile"]), ("node.key", tls["keyfile"])):
            shutil.copy(source, work / name)
        endpoints = f"https://127.0.0.1:{free_port()},{cluster.etcd.endpoint}"
        scratch = {"https://etcd1:2379,https://etcd2:2379": endpoints}
        for _, _, argv in commands([readme_block("weftctl network set weft --config")]):
            argv = [scratch.get(a, a) for a in argv]
            if argv[0] == "weftctl":
                proc = readme_run(cluster, node, work, argv)
                assert proc.returncode == 0, proc.stderr
                continue
            assert argv[0] == "weftd" and endpoints in argv
            log = open(node.log_path, "ab")
            node.agent = subprocess.Popen(
                ["ip", "netns", "exec", node.ns.name, f"{installed}/bin/weftd", *argv[1:], "--node-name", node.name,
                 "--public-ip", node.ip, "--run-dir", node.run_dir, "--state-dir", node.state_dir,
                 "--ipam-data-dir", node.ipam_dir, "--metrics-addr", "127.0.0.1:9465"],
                cwd=work, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            log.close()
        node.wait_ready()
        pod = node.add_pod()
        yield cluster, node, pod, work
    finally:
        cluster.cleanup()


def readme_run(cluster, node, cwd, argv):
    """argv inside the node namespace; weftctl's etcd commands get the cluster's flags."""
    if argv[0] == "weftctl" and argv[1] in ("network", "leases", "graph") and "--etcd-endpoints" not in argv:
        argv = [*argv, "--etcd-endpoints", cluster.etcd.endpoint, *cluster.etcd_flags()]
    env = dict(os.environ, PATH=f"{cluster.installed}/bin:{os.environ['PATH']}")
    return node.ns.run(argv, check=False, cwd=cwd, env=env)


def test_readme_weftd_block_leases_a_subnet_through_the_second_endpoint(readme_node):
    cluster, node, pod, _ = readme_node
    status = node.status()
    assert status["ready"] and status["lease"]["publicIP"] == node.ip
    (row,) = json.loads(cluster.weftctl("leases", "weft", "--json").stdout)
    assert row["node"] == node.name and row["subnet"] == status["lease"]["subnet"]
    assert json.loads(cluster.weftctl("network", "get", "weft").stdout) == \
        {"Backend": {"Type": "vxlan", "VNI": 1}, "Network": "10.244.0.0/16"}
    assert open(node.subnet_file()).read().startswith("WEFT_NETWORK=10.244.0.0/16\n")
    assert pod.ip.startswith(status["lease"]["subnet"].rsplit(".", 1)[0] + ".")


def test_readme_troubleshooting_block_runs_on_a_node(readme_node):
    """Stand-ins: the node's own paths for /run/weft, /var/log/weft/weft.log and
    /var/lib/cni/networks, and its pod's address for the example 10.244.3.7."""
    cluster, node, pod, work = readme_node
    scratch = {"/var/log/weft/weft.log": os.path.join(node.dir, "weft.log"), "10.244.3.7": pod.ip}
    extra = {"status": ["--run-dir", node.run_dir], "whois": ["--data-dir", node.ipam_dir]}
    out = {}
    for _, _, argv in commands([readme_block("weftctl status")]):
        argv = [scratch.get(a, a) for a in argv]
        argv += extra.get(argv[1], []) if argv[0] == "weftctl" else []
        proc = readme_run(cluster, node, work, argv)
        assert proc.returncode == 0, (argv, proc.stderr)
        out[argv[1] if argv[0] == "weftctl" else argv[0]] = proc.stdout
    assert set(out) == {"status", "tail", "leases", "whois", "graph"}
    assert f"network weft on node {node.name}: ready" in out["status"]
    logged = [json.loads(line) for line in out["tail"].splitlines()]
    assert [(e["command"], e["containerID"], e["exit"]) for e in logged] == [("ADD", pod.cid, 0)]
    lease = node.status()["lease"]
    assert any(line.split()[:4] == ["weft", lease["subnet"], node.name, node.ip] for line in out["leases"].splitlines())
    assert pod.ns.name in out["whois"] and pod.cid in out["whois"]
    texts = " ".join(t.text or "" for t in ET.parse(work / "cluster.svg").iter("{http://www.w3.org/2000/svg}text"))
    assert node.name in texts and lease["subnet"] in texts


def test_readme_secondary_network_and_graph_blocks_run(readme_node):
    cluster, node, pod, work = readme_node
    for first in ("weftctl network set weft2", "weftctl graph --ipam-data-dir"):
        for _, _, argv in commands([readme_block(first)]):
            argv = [{"/var/lib/cni/networks": node.ipam_dir, "cluster.svg": "graph.svg"}.get(a, a) for a in argv]
            proc = readme_run(cluster, node, work, argv)
            assert proc.returncode == 0, (argv, proc.stderr)
    assert json.loads(cluster.weftctl("network", "get", "weft2").stdout)["Network"] == "10.245.0.0/16"
    texts = " ".join(t.text or "" for t in ET.parse(work / "graph.svg").iter("{http://www.w3.org/2000/svg}text"))
    assert pod.ip in texts and "10.245.0.0/16" in texts
