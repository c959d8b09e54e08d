"""The README as an operator's manual that cannot drift from the code.

- Blocks marked `<!-- tested -->` before a ```sh fence: every command must be accepted
  as written: weftd/weftctl arguments parse with their real argparse parsers (and a
  --config JSON is a valid network config), make targets and variables exist, every
  repository path exists, kubectl -k points at a kustomization, kind's --name is the
  kind config's, sed substitutions find their text, vagrant names real machines and
  provisioners.  `<!-- tested: usage -->` blocks are synopses: subcommands and flags exist.
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

from .artifacts import CONF, REPO

README = open(os.path.join(REPO, "README.md")).read()
MAKEFILE = open(os.path.join(REPO, "Makefile")).read()
REPO_PATH = re.compile(r"(?:^|[=\s])((?:conf|vagrant|docs|scripts|tests|bin)/[\w./-]*)")


def readme_blocks(kind=None):
    marker = "<!-- tested -->" if kind is None else f"<!-- tested: {kind} -->"
    return re.findall(re.escape(marker) + r"\n```sh\n(.*?)```", README, re.S)


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n#", start + len(title))
    return README[start:end if end > 0 else len(README)]


def table_rows(text: str) -> list:
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[1:]]


def ticks(cell: str) -> list:
    return re.findall(r"`([^`]+)`", cell)


# -- commands -----------------------------------------------------------------------------

def commands():
    """(block number, cwd relative to the repo, argv) of every tested command."""
    out = []
    for number, block in enumerate(readme_blocks()):
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


COMMANDS = commands()


def test_readme_has_readme_blocks():
    assert len(readme_blocks()) >= 10 and len(COMMANDS) >= 40


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


@pytest.mark.parametrize("number,cwd,argv", COMMANDS,
                         ids=[f"{n}:{' '.join(a)[:50]}" for n, _, a in COMMANDS])
def test_readme_command(number, cwd, argv):
    program = argv[0]
    for arg in argv:
        for path in REPO_PATH.findall(arg):
            assert os.path.exists(os.path.join(REPO, cwd, path.rstrip("."))), f"{path} (in {argv})"
        if arg.startswith("WEFTD_ARGS="):
            _check_weftd(["weftd", *shlex.split(arg.split("=", 1)[1].strip("\""))])
    if program == "make":
        _check_make(argv)
    elif program == "weftctl":
        _check_weftctl(argv)
    elif program == "weftd":
        _check_weftd(argv)
    elif program == "vagrant":
        assert cwd == "vagrant", "vagrant commands run in vagrant/"
        _check_vagrant(argv)
    elif program == "kubectl" and "-k" in argv:
        target = argv[argv.index("-k") + 1]
        if not target.startswith("/tmp/"):
            assert os.path.exists(os.path.join(REPO, target, "kustomization.yaml"))
    elif program == "kind" and argv[1:3] == ["create", "cluster"]:
        kind = yaml.safe_load(open(os.path.join(REPO, argv[argv.index("--config") + 1])))
        names = [a for i, a in enumerate(argv) if i and argv[i - 1] == "--name"]
        assert not names or names == [kind["name"]]
    elif program == "kind" and "--name" in argv:
        kind = yaml.safe_load(open(os.path.join(CONF, "kind-config.yaml")))
        assert argv[argv.index("--name") + 1] == kind["name"]
        assert any(a.startswith(f"{kind['name']}-control-plane") for c in COMMANDS for a in c[2])
    elif program == "sed":
        expression = next(a for a in argv[1:] if a.startswith("s|"))
        old = expression.split("|")[1]
        assert any(old in open(os.path.join(CONF, "kubernetes", f)).read()
                   for f in os.listdir(os.path.join(CONF, "kubernetes"))), old
    elif program == "docker" and argv[1] == "cp":
        kind = yaml.safe_load(open(os.path.join(CONF, "kind-config.yaml")))
        assert argv[2].startswith(f"{kind['name']}-control-plane:")


def test_readme_usage_lines_name_real_subcommands_and_flags():
    parser = weftctl._parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    lines = [line.split("  #")[0] for block in readme_blocks("usage") for line in block.splitlines()]
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
    code = {k for k in code if k != "Backend"} | {"Backend.Type"}
    code |= {f"Backend.{k}" for name in backends.names() for k in backends.get(name).CONFIG_KEYS}
    assert documented == code


def test_lease_and_subnet_file_keys_match_the_code():
    text = section("### Leases")
    shown = set(re.findall(r"\w+", re.search(r"holds `(\{.*?\})`", text, re.S).group(1)))
    lease = Lease(subnet=ipaddress.IPv4Network("10.244.3.0/24"), public_ip=ipaddress.IPv4Address("192.0.2.9"),
                  node_name="n", backend_data=VxlanData(1, "02:00:00:00:00:01"),
                  ipv6_subnet=ipaddress.IPv6Network("fd00:10:244:3::/64"),
                  public_ipv6=ipaddress.IPv6Address("2001:db8::9"))
    value = json.loads(lease.to_json())
    assert shown == set(value) | set(value["BackendData"])
    block = re.search(r"### Subnet file.*?```\n(.*?)```", README, re.S).group(1)
    documented = set(re.findall(r"^(WEFT_\w+)=", block, re.M))
    rendered = subnet_file.SubnetLease(
        network=ipaddress.IPv4Network("10.244.0.0/16"), subnet=ipaddress.IPv4Interface("10.244.3.1/24"),
        mtu=1450, ipmasq=True, ipv6_network=ipaddress.IPv6Network("fd00:10:244::/48"),
        ipv6_subnet=ipaddress.IPv6Interface("fd00:10:244:3::1/64")).render()
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
