"""The layout's rules, read from the source (docs/design.md "Development"): no import cycle in
cni_plugin/, heavy libraries only where they belong, no CNI codes in the datapath."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "cni_plugin")


def _modules() -> dict:
    """{dotted module name: path} of every module of the package."""
    found = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(directory, name), os.path.dirname(PACKAGE))
                dotted = rel[:-3].replace(os.sep, ".")
                found[dotted[:-len(".__init__")] if dotted.endswith(".__init__") else dotted] = \
                    os.path.join(directory, name)
    return found


MODULES = _modules()


def _imports(module: str) -> set:
    """Every module `module` imports, at any depth of its code (lazy imports count)."""
    tree = ast.parse(open(MODULES[module]).read())
    package = module if MODULES[module].endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in out if name}


GRAPH = {m: {i for i in _imports(m) if i in MODULES and i != m} for m in MODULES}


def _owner(module: str) -> str:
    """A module's package below cni_plugin (or the module itself at the top)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_cycle_between_modules():
    seen, path, cycles = set(), [], []

    def visit(module):
        if module in path:
            cycles.append(path[path.index(module):] + [module])
            return
        if module in seen:
            return
        seen.add(module)
        path.append(module)
        for target in sorted(GRAPH[module]):
            if not (target in module.split(".") or module.startswith(target + ".")):  # a package's own __init__
                visit(target)
        path.pop()

    for module in sorted(MODULES):
        visit(module)
    assert cycles == []


def test_no_import_cycle_between_packages():
    edges = {}
    for module, targets in GRAPH.items():
        for target in targets:
            if _owner(module) != _owner(target) and target != "cni_plugin":
                edges.setdefault(_owner(module), set()).add(_owner(target))

    def reaches(start, goal):
        seen, todo = set(), list(edges.get(start, ()))
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
        return False

    assert sorted(p for p in edges if reaches(p, p)) == []


@pytest.mark.parametrize("library,allowed", [
    ("pyroute2", ("cni_plugin.datapath.",)),
    # gRPC and protobuf: the transport, and the stubs generated for it (etcd_api/)
    ("grpc", ("cni_plugin.subnet.etcd_transport", "cni_plugin.subnet.etcd_api.")),
    ("google.protobuf", ("cni_plugin.subnet.etcd_api.",)),
    ("cni_plugin.subnet.etcd_api", ("cni_plugin.subnet.etcd_transport", "cni_plugin.subnet.etcd_api.")),
])
def test_heavy_libraries_stay_in_their_module(library, allowed):
    users = sorted(m for m in MODULES if any(i == library or i.startswith(library + ".") for i in _imports(m)))
    assert users and all(m.startswith(allowed) for m in users), users


def test_etcd3_is_gone():
    """etcd's API goes through weft's own generated stubs; the etcd3 package (its
    generated modules need the pure-Python protobuf runtime) is not used anywhere."""
    assert sorted(m for m in MODULES if any(i == "etcd3" or i.startswith("etcd3.") for i in _imports(m))) == []


def test_the_datapath_speaks_no_cni_codes():
    offenders = sorted(m for m in MODULES if m.startswith("cni_plugin.datapath")
                       and any(i.startswith("cni_plugin.cni") for i in GRAPH[m]))
    assert offenders == []


def test_backends_and_the_protocol_layer_stay_below_their_users():
    for module, targets in GRAPH.items():
        if module.startswith(("cni_plugin.cni.", "cni_plugin.datapath.", "cni_plugin.backends.")):
            above = {t for t in targets if t.startswith(("cni_plugin.agent", "cni_plugin.plugin",
                                                         "cni_plugin.ipam", "cni_plugin.cli"))}
            assert above == set(), module


# modules that frame a wire protocol by hand, each the one place for its protocol
# (etcd is reached through generated stubs: subnet/etcd_api/)
WIRE_CODECS = {"cni_plugin.datapath.nlcodec": "netlink", "cni_plugin.flows.ipfix": "IPFIX"}


def test_raw_netlink_is_framed_only_in_the_codec():
    """struct (byte layouts) only in the declared codecs: a second copy of the netlink
    header or attribute layout anywhere else fails here."""
    users = sorted(m for m in MODULES if "struct" in _imports(m))
    assert set(users) <= set(WIRE_CODECS), users
    datapath = sorted(m for m in MODULES if m.startswith("cni_plugin.datapath.") and
                      any(i.startswith("pyroute2.netlink.rtnl") for i in _imports(m)))
    assert datapath == []  # messages are built by the codec, not from pyroute2's classes


def _reachable(module: str) -> set:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(GRAPH[current])
    return seen


@pytest.mark.parametrize("module", ["cni_plugin.datapath.rtnl", "cni_plugin.datapath.netns",
                                    "cni_plugin.datapath.links", "cni_plugin.datapath.container",
                                    "cni_plugin.datapath.owned_dump", "cni_plugin.datapath.changes",
                                    "cni_plugin.datapath.batch", "cni_plugin.datapath.nlcodec"])
def test_raw_netlink_never_loads_pyroute2(module):
    """The per-pod path and the raw readers: pyroute2 (~0.2 s to import) stays out, at
    any depth, lazy imports included."""
    loaders = sorted(m for m in _reachable(module)
                     if any(i == "pyroute2" or i.startswith("pyroute2.") for i in _imports(m)))
    assert loaders == []
