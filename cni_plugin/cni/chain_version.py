"""Which cniVersion a conflist can say on a node: what its plugins answer to VERSION, and
what the node's container runtime takes.

A runtime's libcni sends every plugin of a list the list's cniVersion, and a plugin that
does not know that version fails the call; libcni itself refuses results newer than it
knows.  cniVersion 1.1.0 brings GC and STATUS, but Debian 12's reference plugins (1.1)
stop at 1.0.0, and so does libcni 1.1, which containerd 1.6 and 1.7, CRI-O up to 1.30
and podman 4 carry.  So a conflist says PREFERRED only when every plugin it names (each
`type`, and each `ipam.type`, which the main plugin calls with the same version) lists
PREFERRED in its VERSION answer AND the runtime is one known to take it; FALLBACK
otherwise.

  chain_plugins(conflist)          the plugin names to ask, in order
  ask(name, bin_dirs)              one plugin's VERSION answer (bounded in time and size)
  judge_runtime(reported, source)  whether a runtime (NAME://VERSION, as a Node reports
                                   it) takes PREFERRED, pure; unconfirmed(why) when it is
                                   not known
  choose(answers, runtime, forced) the decision, pure: (version, reason)

A plugin's answer and a runtime's version are untrusted: a plugin that is missing, not
executable, slow, loud, failing or unparsable counts as "does not support PREFERRED", a
runtime that is not named, unknown or unparsable as "not confirmed", and the reason
names it.
"""

import json
import os
import re
import selectors
import signal
import subprocess
import time
from typing import NamedTuple

from . import versions
from .plugins import is_plain_name, locate

PREFERRED = "1.1.0"  # GC and STATUS (libcni 1.2+, containerd 2.x; plugins 1.5+)
FALLBACK = "1.0.0"   # libcni 1.1 (containerd 1.6, podman 4) and the plugins 1.1 of Debian 12
ASK_TIMEOUT = 5.0    # seconds a plugin gets to answer VERSION (a Go plugin takes milliseconds)
ASK_LIMIT = 16 * 1024  # bytes of answer read; a real one is under 200
_EXCERPT = 80
_VERSION_TEXT = re.compile(r"^[0-9A-Za-z.+-]{1,16}$")  # what a version may look like in a message

# The runtimes whose libcni takes PREFERRED, from the first release that carries libcni
# 1.2 (read from each project's go.mod at its release tags): containerd 2.0.0 (libcni
# 1.2.3; every 1.6 and 1.7 release has 1.1), CRI-O 1.31.0 (libcni 1.2.3 under ocicni;
# every 1.30 release and before has 1.1.2).  Names as kubelet reports them (the CRI
# Version answer's RuntimeName), with the name a person reads.
RUNTIMES_TAKING_PREFERRED = {"containerd": ("containerd", (2, 0, 0)), "cri-o": ("CRI-O", (1, 31, 0))}
# NAME://[v]X.Y.Z[suffix]: kubelet's containerRuntimeVersion (containerd://2.1.9,
# containerd://1.6.20~ds1, containerd://1.7.23-k3s2, cri-o://1.31.0)
RUNTIME_TEXT = re.compile(r"(?P<name>[a-z][a-z0-9.-]{0,31})://v?(?P<release>[0-9]{1,6}\.[0-9]{1,6}\.[0-9]{1,6})"
                          r"(?P<suffix>[-+~][0-9A-Za-z.+~_-]{1,64})?")
_PRERELEASE = re.compile(r"[-~.]?(alpha|beta|rc|pre|dev)", re.IGNORECASE)


class Answer(NamedTuple):
    plugin: str           # the name in the conflist
    path: str             # the executable asked, or the directories searched
    supported: tuple      # the versions it listed (empty when it gave no usable answer)
    problem: str = ""     # why it gave no usable answer ("" when it did)


class Choice(NamedTuple):
    version: str
    reason: str


class RuntimeVerdict(NamedTuple):
    accepts: bool   # its libcni takes PREFERRED
    known: bool     # the runtime was identified (False: it could not be confirmed)
    reason: str


class Runtime(NamedTuple):
    name: str       # as reported: containerd, cri-o, ...
    release: tuple  # (major, minor, patch)
    suffix: str     # what follows X.Y.Z ("" when nothing): a pre-release or a packager's mark

    def __str__(self):
        return f"{self.name}://{'.'.join(map(str, self.release))}{self.suffix}"


def chain_plugins(conflist: dict) -> list:
    """The plugins a runtime runs for this conflist (each entry's type, then its ipam.type),
    in order, each once.  Entries that are not objects, or names that are not strings, are
    kept as they are so that ask() can name them as unusable."""
    names = []
    plugins = conflist.get("plugins") if isinstance(conflist, dict) else None
    for entry in plugins if isinstance(plugins, list) else []:
        found = [entry.get("type")] if isinstance(entry, dict) else [entry]
        ipam = entry.get("ipam") if isinstance(entry, dict) else None
        if isinstance(ipam, dict) and "type" in ipam:
            found.append(ipam["type"])
        names.extend(name for name in found if name not in names)
    return names


def _excerpt(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return repr(text[:_EXCERPT] + ("..." if len(text) > _EXCERPT else ""))


def _read_bounded(proc, timeout: float, limit: int):
    """(stdout bytes, problem) read until EOF, the deadline or more than `limit` bytes."""
    deadline = time.monotonic() + timeout
    chunks, size = [], 0
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                return b"".join(chunks), f"did not answer VERSION within {timeout:g}s"
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks), f"answered VERSION with more than {limit} bytes"
    left = deadline - time.monotonic()
    try:
        proc.wait(max(left, 0))
    except subprocess.TimeoutExpired:
        return b"".join(chunks), f"did not exit within {timeout:g}s of being asked VERSION"
    return b"".join(chunks), ""


def _parse(stdout: bytes, returncode: int) -> tuple:
    """(supported versions, problem) from a finished VERSION call."""
    if returncode != 0:
        return (), f"failed VERSION with exit status {returncode}: {_excerpt(stdout)}"
    try:
        answer = json.loads(stdout)
    except (ValueError, RecursionError):
        return (), f"answered VERSION with something that is not JSON: {_excerpt(stdout)}"
    supported = answer.get("supportedVersions") if isinstance(answer, dict) else None
    if not isinstance(supported, list) or not supported or \
            not all(isinstance(v, str) and _VERSION_TEXT.match(v) for v in supported):
        return (), f"answered VERSION without a list of supportedVersions: {_excerpt(stdout)}"
    return tuple(supported), ""


def ask(plugin_type, directories, timeout: float = ASK_TIMEOUT, limit: int = ASK_LIMIT) -> Answer:
    """Run `plugin_type` from `directories` with CNI_COMMAND=VERSION, as libcni does."""
    where = ":".join(directories)
    if not is_plain_name(plugin_type):
        return Answer(repr(plugin_type), where, (), "is not a plugin name (a plain file name)")
    executable = locate(plugin_type, directories)
    if not executable:
        return Answer(plugin_type, where, (), f"is not an executable file in {where or 'no directory'}")
    environ = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    try:
        proc = subprocess.Popen([os.path.abspath(executable)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=environ, cwd="/", start_new_session=True)
    except OSError as exc:
        return Answer(plugin_type, executable, (), f"could not be run: {exc.strerror or exc}")
    try:
        try:
            proc.stdin.write(json.dumps({"cniVersion": PREFERRED}).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass  # it did not read its stdin; its answer still counts
        stdout, problem = _read_bounded(proc, timeout, limit)
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the plugin and what it started
            except ProcessLookupError:
                pass  # it exited meanwhile
            proc.wait()
        proc.stdout.close()
    if problem:
        return Answer(plugin_type, executable, (), problem)
    supported, problem = _parse(stdout, proc.returncode)
    return Answer(plugin_type, executable, supported, problem)


def _describe(answer: Answer) -> str:
    if answer.problem:
        return f"{answer.plugin} ({answer.path}) {answer.problem}"
    return f"{answer.plugin} ({answer.path}) supports {', '.join(answer.supported)}"


def check_forced(version: str, source: str) -> str:
    """An operator's forced version, refused unless weft knows it."""
    if version not in versions.SUPPORTED:
        raise ValueError(f"{source} {version!r} is not a CNI version weft knows "
                         f"({', '.join(versions.SUPPORTED)}; or 'auto')")
    return version


def shown(text) -> str:
    """An untrusted value for a message: quoted, control characters escaped, cut short."""
    return _excerpt(text.encode()) if isinstance(text, str) else repr(text)


def parse_runtime(text) -> Runtime:
    """A runtime's NAME://VERSION, read strictly; ValueError naming what it is not."""
    match = RUNTIME_TEXT.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"{shown(text)} is not a NAME://X.Y.Z runtime version (e.g. containerd://2.1.9)")
    release = tuple(int(part) for part in match["release"].split("."))
    return Runtime(match["name"], release, match["suffix"] or "")


def unconfirmed(why: str) -> RuntimeVerdict:
    """A runtime that could not be learnt: it does not take PREFERRED, for all anyone knows."""
    return RuntimeVerdict(False, False, f"the runtime could not be confirmed: {why}")


def judge_runtime(reported, source: str) -> RuntimeVerdict:
    """Whether the runtime `reported` (NAME://VERSION; `source` says who reported it) takes
    PREFERRED: containerd from 2.0.0, CRI-O from 1.31.0.  Any other runtime, and a version
    that does not parse, is not confirmed; a pre-release of the first release that takes it
    counts as older (containerd's 2.0.0 betas and first release candidate carried libcni
    1.1)."""
    try:
        runtime = parse_runtime(reported)
    except ValueError:
        return unconfirmed(f"{shown(reported)} ({source}) is not a NAME://X.Y.Z runtime version "
                           f"(e.g. containerd://2.1.9)")
    known = RUNTIMES_TAKING_PREFERRED.get(runtime.name)
    if known is None:
        names = ", ".join(f"{title} {'.'.join(map(str, first[:2]))} and later" for title, first
                          in RUNTIMES_TAKING_PREFERRED.values())
        return unconfirmed(f"{runtime} ({source}) is a runtime weft does not know to take {PREFERRED} "
                           f"(known: {names})")
    title, first = known
    first_text = ".".join(map(str, first))
    prerelease = runtime.release == first and _PRERELEASE.match(runtime.suffix)
    if runtime.release < first or prerelease:
        what = f"a pre-release of {title} {first_text}" if prerelease else f"older than {title} {first_text}"
        return RuntimeVerdict(False, True, f"the runtime {runtime} ({source}) is {what}: its libcni (before "
                                           f"1.2) refuses {PREFERRED} results")
    return RuntimeVerdict(True, True, f"the runtime {runtime} ({source}) takes {PREFERRED} ({title} "
                                      f"{first_text} and later carry libcni 1.2 or later)")


def choose(answers, runtime: RuntimeVerdict = None, forced: str = "", forced_by: str = "the operator") -> Choice:
    """The conflist's cniVersion and why.  Without `forced`: PREFERRED when every answer
    lists it and `runtime` accepts it (None: not confirmed), else FALLBACK, naming the
    plugins and the runtime that held it back.  With `forced` (already checked by
    check_forced): that version, naming the plugins that do not list it; `runtime` is not
    consulted."""
    answers = list(answers)
    if forced:
        lacking = [_describe(a) for a in answers if forced not in a.supported]
        reason = f"forced by {forced_by}"
        if lacking:
            reason += f"; the runtime will refuse the chain, as these plugins lack it: {'; '.join(lacking)}"
        return Choice(forced, reason)
    runtime = runtime or unconfirmed("nobody said which it is")
    if not answers:
        return Choice(FALLBACK, f"the conflist names no plugin to ask, so not {PREFERRED}")
    holders = [a for a in answers if PREFERRED not in a.supported]
    if not holders:
        plugins = f"every plugin of the chain supports {PREFERRED}: {', '.join(a.plugin for a in answers)}"
        if runtime.accepts:
            return Choice(PREFERRED, f"{plugins}; and {runtime.reason}")
        return Choice(FALLBACK, f"not {PREFERRED}: {runtime.reason}; {plugins}")
    reason = f"not {PREFERRED}, held back by: {'; '.join(_describe(a) for a in holders)}"
    if not runtime.accepts:
        reason += f"; and {runtime.reason}"
    short = [a for a in answers if not a.problem and FALLBACK not in a.supported]
    if short:
        reason += (f"; {', '.join(a.plugin for a in short)} lacks {FALLBACK} too, so the runtime "
                   f"will refuse the chain")
    return Choice(FALLBACK, reason)
