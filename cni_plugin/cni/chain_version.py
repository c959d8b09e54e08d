"""Which cniVersion a conflist can say on a node: what its plugins answer to VERSION.

A runtime's libcni sends every plugin of a list the list's cniVersion, and a plugin that
does not know that version fails the call.  cniVersion 1.1.0 brings GC and STATUS, but
Debian 12's reference plugins (1.1) stop at 1.0.0 and so does the libcni of containerd
1.6 and podman 4.  So a conflist says PREFERRED only when every plugin it names
(each `type`, and each `ipam.type`, which the main plugin calls with the same version)
lists PREFERRED in its VERSION answer, and FALLBACK otherwise.

  chain_plugins(conflist)   the plugin names to ask, in order
  ask(name, bin_dirs)       one plugin's VERSION answer (bounded in time and size)
  choose(answers, forced)   the decision, pure: (version, reason)

A plugin's answer is untrusted: one that is missing, not executable, slow, loud, failing
or unparsable counts as "does not support PREFERRED", and the reason names it.
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


class Answer(NamedTuple):
    plugin: str           # the name in the conflist
    path: str             # the executable asked, or the directories searched
    supported: tuple      # the versions it listed (empty when it gave no usable answer)
    problem: str = ""     # why it gave no usable answer ("" when it did)


class Choice(NamedTuple):
    version: str
    reason: str


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


def choose(answers, forced: str = "", forced_by: str = "the operator") -> Choice:
    """The conflist's cniVersion and why.  Without `forced`: PREFERRED when every answer
    lists it, else FALLBACK (naming the plugins that held it back).  With `forced` (already
    checked by check_forced): that version, naming the plugins that do not list it."""
    answers = list(answers)
    if forced:
        lacking = [_describe(a) for a in answers if forced not in a.supported]
        reason = f"forced by {forced_by}"
        if lacking:
            reason += f"; the runtime will refuse the chain, as these plugins lack it: {'; '.join(lacking)}"
        return Choice(forced, reason)
    if not answers:
        return Choice(FALLBACK, f"the conflist names no plugin to ask, so not {PREFERRED}")
    holders = [a for a in answers if PREFERRED not in a.supported]
    if not holders:
        return Choice(PREFERRED, f"every plugin of the chain supports {PREFERRED}: "
                                 f"{', '.join(a.plugin for a in answers)}")
    reason = f"not {PREFERRED}, held back by: {'; '.join(_describe(a) for a in holders)}"
    short = [a for a in answers if not a.problem and FALLBACK not in a.supported]
    if short:
        reason += (f"; {', '.join(a.plugin for a in short)} lacks {FALLBACK} too, so the runtime "
                   f"will refuse the chain")
    return Choice(FALLBACK, reason)
