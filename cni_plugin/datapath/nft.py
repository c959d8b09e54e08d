"""The one nftables module: every nftables read and change weft makes goes through here.

It drives libnftables' JSON API in-process (libnftables.so.1, Debian's libnftables1,
which the nftables package depends on) through a small ctypes binding: no `nft`
process is ever started, and no rule text is ever built (one fixed declaration,
declare_typeof_set, is text: nftables 1.0.6's JSON cannot say it; see there).  Callers hand run() a list
of JSON commands (dicts, strings as data: a hostile name stays a JSON string and
never becomes syntax) and get back the objects nft answered with.

Why ctypes and not Debian's python3-nftables: the project's venv does not see
Debian's dist-packages, and that binding is a thin wrapper over the same eight C
calls used here; binding them directly keeps the venv self-contained.

Namespaces: libnftables talks netlink from the calling thread's network namespace.
weftd and the plugin run inside the node's namespace (tests start them with
`ip netns exec`), so every call lands in the node's ruleset.

One context per thread (libnftables contexts are not thread-safe; weftd serves CNI
calls from a thread pool and runs one thread per network).  Commands in one run()
are one transaction: all of them apply or none does.
"""

import ctypes
import json
import re
import _thread  # threading.Lock and .local are these; `threading` costs a standalone call ~1.5 ms
from collections import namedtuple

from .errors import NftError

NAME_MAX = 256  # the longest table, chain or set name nftables accepts

LIBRARY = "libnftables.so.1"
INSTALL_HINT = ("install Debian's nftables package (it brings libnftables1), or set ipMasq: false")

_NFT_CTX_DEFAULT = 0
_NFT_CTX_OUTPUT_JSON = 1 << 4
_NFT_CTX_OUTPUT_TERSE = 1 << 11  # listings without set elements
_NO_SUCH = "No such file or directory"  # libnftables' words for a missing object


class Outcome(namedtuple("Outcome", "action details", defaults=((),))):
    """What a table's ensure() did: action ("unchanged", "created", "rebuilt", "repaired",
    ...: each table's module lists its own) and details (what differed, as text).  A
    namedtuple: `dataclasses` would cost the per-pod path its `inspect` import."""

    __slots__ = ()

    @property
    def changed(self) -> bool:
        return self.action != "unchanged"

_lib = None
_lib_lock = _thread.allocate_lock()
_local = _thread._local()


def _library():
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                lib = ctypes.CDLL(LIBRARY)
            except OSError as exc:
                raise NftError(f"nftables is unavailable: cannot load {LIBRARY} ({exc}); "
                               f"{INSTALL_HINT}") from None
            lib.nft_ctx_new.restype = ctypes.c_void_p
            lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
            lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
            lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
            lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
            lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
            lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
            _lib = lib
    return _lib


class _Context:
    """One libnftables context with buffered JSON output and errors."""

    def __init__(self):
        self.lib = _library()
        self.ctx = self.lib.nft_ctx_new(_NFT_CTX_DEFAULT)
        if not self.ctx:
            raise NftError("nft_ctx_new failed: libnftables could not make a context")
        self.lib.nft_ctx_output_set_flags(self.ctx, _NFT_CTX_OUTPUT_JSON)
        if self.lib.nft_ctx_buffer_output(self.ctx) or self.lib.nft_ctx_buffer_error(self.ctx):
            raise NftError("libnftables could not buffer its output")

    def run(self, text: bytes, terse: bool = False) -> tuple:
        if terse:
            self.lib.nft_ctx_output_set_flags(self.ctx, _NFT_CTX_OUTPUT_JSON | _NFT_CTX_OUTPUT_TERSE)
        try:
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, text)
        finally:
            if terse:
                self.lib.nft_ctx_output_set_flags(self.ctx, _NFT_CTX_OUTPUT_JSON)
        out = self.lib.nft_ctx_get_output_buffer(self.ctx) or b""
        err = self.lib.nft_ctx_get_error_buffer(self.ctx) or b""
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    def __del__(self):
        if getattr(self, "ctx", None):
            self.lib.nft_ctx_free(self.ctx)
            self.ctx = None


def _context() -> _Context:
    ctx = getattr(_local, "ctx", None)
    if ctx is None:
        ctx = _local.ctx = _Context()
    return ctx


def available() -> bool:
    """True when libnftables can be loaded here."""
    try:
        _library()
    except NftError:
        return False
    return True


def _execute(commands: list, what: str, terse: bool = False) -> list:
    if not isinstance(commands, list):
        raise TypeError("nft.run takes a list of JSON commands")
    if not commands:
        return []
    text = json.dumps({"nftables": commands}).encode()
    rc, out, err = _context().run(text, terse)
    if rc != 0:
        raise NftError(f"nftables refused {what}: {' '.join(err.split()) or 'no reason given'}")
    if not out.strip():
        return []
    try:
        return json.loads(out).get("nftables", [])
    except ValueError as exc:
        raise NftError(f"nftables answered {what} with no JSON: {exc}") from None


def _describe(commands: list) -> str:
    """A short account of the commands for error messages: "[add table weft_x; add set src4]"."""
    parts = []
    for command in commands[:3]:
        verb, obj = next(iter(command.items())) if isinstance(command, dict) and command else ("?", {})
        kind, inner = next(iter(obj.items())) if isinstance(obj, dict) and obj else ("", {})
        name = (inner.get("name") or inner.get("table") or "") if isinstance(inner, dict) else ""
        parts.append(" ".join(p for p in (verb, kind, str(name)) if p))
    more = f" (+{len(commands) - 3} more)" if len(commands) > 3 else ""
    return "[" + "; ".join(parts) + more + "]"


def run(commands: list) -> list:
    """Run JSON commands (e.g. [{"add": {"table": {...}}}]) as one transaction; returns
    the objects nftables answered with (listings), [] for changes.  NftError names
    the commands and nftables' reason."""
    return _execute(commands, _describe(commands))


def is_missing(exc: NftError) -> bool:
    """Whether nftables refused because a table, set, chain or element does not exist."""
    return _NO_SUCH in str(exc)


_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TYPEOF_ALLOWED = frozenset({"iifname . @th,64,128"})
_FAMILIES = frozenset({"ip", "ip6", "inet", "arp", "bridge", "netdev"})


def declare_typeof_set(family: str, table: str, name: str, typeof: str, timeout: int = None,
                       size: int = None) -> None:
    """Add (or keep) a set declared by `typeof`, the one text command weft sends.

    nftables 1.0.6's JSON has no `typeof`, and a set keyed by a raw payload (the target
    of a neighbour advertisement) can only be declared that way.  Nothing from a runtime
    or a netconf reaches this text: the family and typeof come from a fixed list, the
    table and set names must be plain identifiers (weft makes them from [A-Za-z0-9_]),
    and anything else raises ValueError before nftables sees it.  Elements are then
    added through run() as JSON like any other."""
    if family not in _FAMILIES or typeof not in _TYPEOF_ALLOWED or not _PLAIN_NAME.match(table) \
            or not _PLAIN_NAME.match(name) or not all(v is None or type(v) is int and v > 0 for v in (timeout, size)):
        raise ValueError(f"declare_typeof_set: refusing {family!r} {table!r} {name!r} {typeof!r}")
    extra = (f" flags timeout ; timeout {timeout}s ;" if timeout else "") + (f" size {size} ;" if size else "")
    text = f"add table {family} {table}\nadd set {family} {table} {name} {{ typeof {typeof} ;{extra} }}\n"
    rc, _, err = _context().run(text.encode())
    if rc != 0:
        raise NftError(f"nftables refused [add set {family} {table} {name}]: {' '.join(err.split()) or 'no reason given'}")


def list_table(family: str, name: str, elements: bool = True):
    """The table's objects (table, sets with elements, chains, rules) as nft's JSON
    dicts, or None when it does not exist.  Any other failure is an NftError: a table
    that cannot be read is not an absent one.  elements=False: its sets without their
    elements (nft -t; the kernel is not asked for them), for a check of the table's
    shape whose cost must not grow with the pods."""
    try:
        return _execute([{"list": {"table": {"family": family, "name": name}}}],
                        f"list table {family} {name}", terse=not elements)
    except NftError as exc:
        if _NO_SUCH in str(exc):
            return None
        raise


def remove_table(family: str, name: str) -> bool:
    """Delete a table; False when there was none."""
    if list_table(family, name) is None:
        return False
    _execute([{"delete": {"table": {"family": family, "name": name}}}], f"delete table {family} {name}")
    return True


def list_tables(family: str = None) -> list:
    """[(family, name)] of every table (of one family when given)."""
    objects = _execute([{"list": {"tables": {}}}], "list tables")
    return [(t["family"], t["name"]) for t in (o.get("table") for o in objects) if t
            and (family is None or t["family"] == family)]


def sets_of(objects: list) -> dict:
    """{set name: [(value, comment)]} from list_table's objects; interval elements come
    back as ("10.0.0.0/16", ""), ranges as ("a-b", ""), concatenations as ("a . b", "")."""
    sets = {}
    for item in objects:
        nft_set = item.get("set")
        if not nft_set:
            continue
        elements = sets.setdefault(nft_set["name"], [])
        for elem in nft_set.get("elem", []):
            comment = ""
            if isinstance(elem, dict) and "elem" in elem:
                comment = elem["elem"].get("comment", "")
                elem = elem["elem"].get("val")
            if isinstance(elem, dict) and "prefix" in elem:
                elem = f"{elem['prefix']['addr']}/{elem['prefix']['len']}"
            elif isinstance(elem, dict) and "range" in elem:
                elem = f"{elem['range'][0]}-{elem['range'][1]}"
            elif isinstance(elem, dict) and "concat" in elem:  # nft's own spelling: a . b . c
                elem = " . ".join(str(part) for part in elem["concat"])
            elements.append((str(elem), comment))
    return sets


def rules_of(objects: list, chain: str) -> list:
    """The rules of one chain from list_table's objects, in order."""
    return [item["rule"] for item in objects if "rule" in item and item["rule"].get("chain") == chain]


def chains_of(objects: list) -> dict:
    """{chain name: chain dict} from list_table's objects."""
    return {item["chain"]["name"]: item["chain"] for item in objects if "chain" in item}
