"""The `weft` and `weft-ipam` executables: hand the invocation to weftd, or run it here.

This module is the whole start-up path of every CNI call, so it imports nothing but
interpreter built-ins (`_socket` instead of `socket`, whose enum set-up costs more
than the rest of the call) and the protocol's own module, cni/wire.py.  It lives at
the package's top so that a call imports no package it does not need (each costs
~0.1 ms of the call).  It connects to the agent's unix socket (netconf key
`agentSocket`, default /run/weft/weftd.sock), sends the CNI environment and stdin,
and relays the agent's stdout and exit code; `weft` hands over the pod's network
namespace too, opened here (open_netns), so weftd needs no view of the runtime's
netns directory.  No agent listening: the handlers run in this process (standalone
mode, same semantics).  An agent that accepted the call
but does not answer within the deadline is told so (the forwarder shuts its sending
half: weftd sees the caller leave, abandons the call and rolls it back) and the
forwarder waits a grace period for its answer: the abandonment (code 11, nothing left
behind: retry) or whatever the call ended with first.  Code 11 therefore always means
weft stopped working on the call; no answer even then is code 5.

The bytes on the socket are cni/wire.py's business.
"""

import posix  # built in; `os` would cost a module import on every call
import sys

from .cni import wire

DEFAULT_SOCKET = wire.DEFAULT_SOCKET

DEFAULT_TIMEOUT = 60.0  # seconds; WEFT_AGENT_TIMEOUT overrides (runtimes wait minutes)
# datapath/netns.py's OPEN_FLAGS, spelled with built-ins (that module imports fcntl)
NETNS_OPEN_FLAGS = posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NONBLOCK | posix.O_NOCTTY
ABANDON_GRACE = 15.0  # seconds the agent has to confirm it abandoned a call past its deadline


class AgentSilent(Exception):
    """weftd neither answered nor confirmed abandoning the call."""


def socket_path(stdin: bytes) -> str:
    """The netconf's agentSocket, found without the json module (whose import, with
    re and enum, costs more than the whole forwarded call)."""
    key = stdin.find(b'"agentSocket"')
    if key < 0:
        return DEFAULT_SOCKET
    rest = stdin[key + len(b'"agentSocket"'):].lstrip()
    if rest[:1] == b":":
        rest = rest[1:].lstrip()
        end = rest.find(b'"', 1)
        value = rest[1:end] if rest[:1] == b'"' and end > 0 else b""
        if value and b"\\" not in value:
            return value.decode()
    import json  # escapes or odd layout: let the real parser decide

    try:
        conf = json.loads(stdin)
        path = conf.get("agentSocket") if isinstance(conf, dict) else None
    except (ValueError, RecursionError):
        return DEFAULT_SOCKET
    return path if isinstance(path, str) and path else DEFAULT_SOCKET


class AgentUnavailable(Exception):
    """Nobody listens on the socket: run standalone."""


def ask_agent(path: str, role: str, environ, stdin: bytes, timeout: float):
    """(stdout, exit code) from weftd; AgentUnavailable if it is not there."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError):
            raise AgentUnavailable(path)
        netns_fd = open_netns(environ) if role == "weft" else None
        try:
            wire.send_request(sock, wire.encode_request(role, environ, stdin), netns_fd)
        finally:
            if netns_fd is not None:
                posix.close(netns_fd)
        try:
            return wire.read_reply(sock)
        except TimeoutError:
            pass
        sock.shutdown(_socket.SHUT_WR)  # "I left": weftd abandons the call and says so
        sock.settimeout(min(timeout, ABANDON_GRACE))
        try:
            return wire.read_reply(sock)
        except TimeoutError:
            raise AgentSilent(path)
    finally:
        sock.close()


def open_netns(environ):
    """CNI_NETNS opened here, in the runtime's view of the filesystem, for weftd to use
    (its own mount namespace may not show the runtime's netns directory, nor a
    /proc/<pid>/ns/net of another PID namespace).  Non-blocking: a FIFO or a device
    never holds the call up; what the descriptor is, weftd checks (a network namespace,
    not its own) and refuses with a CNI error naming CNI_NETNS.  None when unset or
    unopenable (a DEL whose namespace is already gone): weftd then goes by the path."""
    path = environ.get(b"CNI_NETNS") if b"CNI_NETNS" in environ else environ.get("CNI_NETNS")
    if not path:
        return None
    try:
        return posix.open(path, NETNS_OPEN_FLAGS)
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None


def _cni_error(code: int, msg: str, stdin: bytes) -> bytes:
    version = "1.1.0"
    marker = stdin.find(b'"cniVersion"')
    if marker >= 0:  # answer in the caller's version without a JSON parse
        tail = stdin[marker + 12:marker + 40].split(b'"')
        if len(tail) > 1 and tail[1].replace(b".", b"").isdigit():
            version = tail[1].decode()
    msg = msg.replace("\\", "\\\\").replace('"', '\\"')
    return (f'{{"cniVersion": "{version}", "code": {code}, "msg": "{msg}"}}\n').encode()


def standalone(role: str, stdin: bytes) -> tuple:
    """The handlers in this process.  The installed launcher appended the venv's
    site-packages to sys.path (scripts/install.sh) without site processing: its .pth
    files (an editable install's import hook: pathlib, re, fnmatch, ~15-40 ms) never
    run, and no verb's own path imports a dependency.  Run by hand without that
    line, site processing is done here as before.

    The cyclic garbage collector is off for the rest of the process: a standalone call
    lives for tens of milliseconds and then exits, taking any garbage with it, while
    the collector would run a few dozen passes over the objects the verb's ~65 module
    imports create (~2-3 ms of every call).  Nothing in a call waits on a collection:
    locks, sockets and files are closed explicitly (with-blocks), never by a finalizer."""
    import gc  # built in
    import os

    gc.disable()

    if not any(path.endswith(("site-packages", "dist-packages")) for path in sys.path):
        import site

        site.main()
    from .roles import invoke

    return invoke(role, os.environ, stdin)


def main(role: str) -> int:
    stdin = sys.stdin.buffer.read()
    environ = posix.environ  # bytes keys and values
    path = socket_path(stdin)
    timeout = float(environ.get(b"WEFT_AGENT_TIMEOUT") or DEFAULT_TIMEOUT)
    try:
        out, code = ask_agent(path, role, environ, stdin, timeout)
    except AgentUnavailable:
        out, code = standalone(role, stdin)
    except AgentSilent:
        out, code = _cni_error(5, f"weftd on {path} did not answer within {timeout:g}s nor confirm "
                                  "abandoning the call; it may still be working on it: DEL the "
                                  "attachment before retrying (weftd's log says more)", stdin), 1
    except OSError as exc:  # connection reset mid-call: the agent died, and its work with it
        out, code = _cni_error(11, f"weftd on {path} failed mid-call ({exc}); "
                                   "the runtime should retry", stdin), 1
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    return code
