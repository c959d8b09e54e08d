"""The weft <-> weftd socket protocol, both halves (built-ins only: the client half
runs on every CNI call, before any real import).

Both directions are length-prefixed (4-byte big-endian lengths):
  request:  b"WEFT1 " + role + b"\\n" + len + b"KEY=VALUE\\0..." + len + stdin
  reply:    exit code (4 bytes, signed) + len + stdout
Only CNI_* variables cross the socket.

The pod's network namespace may ride along: the forwarder opens CNI_NETNS itself and
attaches the descriptor to the request's first bytes (SCM_RIGHTS), so weftd needs no
view of the runtime's netns directory.  At most one descriptor per request; the bytes
are the same with or without it.  That keeps both halves of a rolling upgrade working:
a weftd of the previous version reads with plain recv(), and the kernel closes a
descriptor nobody asked for (the request still parses; that weftd opens the path, as
it always did); a forwarder of the previous version sends none, and weftd opens the
path.

Once its request is sent the client only reads; end-of-file on the server's side
(the client closed, was killed, or shut its sending half at its deadline) means the
caller left, and the server abandons the call (agent/cni_server.py).  A client that
shut its sending half still reads the one reply: how the call ended.
"""

import posix  # built in, as is sys: the descriptor's bytes and its closing
import sys

DEFAULT_SOCKET = "/run/weft/weftd.sock"  # where weftd listens by default; paths.py derives RUN_DIR from it
MAGIC = b"WEFT1 "
ROLES = ("weft", "weft-ipam")
HEADER_LIMIT = 64
FD_SIZE = 4  # a descriptor in SCM_RIGHTS data: a C int, native byte order


class ProtocolError(ValueError):
    """The peer sent something that is not a weft request or reply."""


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def recv_exact(sock, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed the connection early")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# -- client half (the forwarder) ---------------------------------------------

def encode_request(role: str, environ, stdin: bytes) -> bytes:
    """environ: str or bytes keys and values (os.environ or posix.environ)."""
    items = []
    for key, value in environ.items():
        key = key if isinstance(key, bytes) else key.encode()
        if key.startswith(b"CNI_"):
            items.append(key + b"=" + (value if isinstance(value, bytes) else value.encode()) + b"\0")
    return MAGIC + role.encode() + b"\n" + _frame(b"".join(items)) + _frame(stdin)


def send_request(sock, request: bytes, netns_fd=None) -> None:
    """Send `request`; netns_fd (the pod's network namespace) rides on its first bytes.
    The kernel holds its own reference from here on: the caller closes its copy."""
    if netns_fd is None:
        sock.sendall(request)
        return
    import _socket

    sent = sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                                     netns_fd.to_bytes(FD_SIZE, sys.byteorder))])
    if sent < len(request):  # a stream socket may take a long request in parts
        sock.sendall(memoryview(request)[sent:])


def read_reply(sock) -> tuple:
    """(stdout, exit code) from the agent."""
    code = int.from_bytes(recv_exact(sock, 4), "big", signed=True)
    return recv_exact(sock, int.from_bytes(recv_exact(sock, 4), "big")), code


# -- server half (weftd) ---------------------------------------------------------

def _read_line(sock) -> bytes:
    line = bytearray()
    while not line.endswith(b"\n"):
        if len(line) > HEADER_LIMIT:
            raise ProtocolError("request header too long")
        line += recv_exact(sock, 1)
    return bytes(line[:-1])


class _Receiver:
    """recv() over recvmsg(): the request's bytes, and every descriptor that arrives
    with them (born close-on-exec: no child of weftd inherits a pod's namespace)."""

    def __init__(self, sock):
        import _socket

        self.sock = sock
        self.fds = []
        self.truncated = False
        # room for one more than allowed: a second descriptor is seen (and refused),
        # not silently dropped; the kernel closes any that do not fit
        self._room = _socket.CMSG_SPACE(2 * FD_SIZE)
        self._flags = _socket.MSG_CMSG_CLOEXEC
        self._rights = (_socket.SOL_SOCKET, _socket.SCM_RIGHTS)
        self._ctrunc = _socket.MSG_CTRUNC

    def recv(self, size: int) -> bytes:
        data, ancillary, flags, _ = self.sock.recvmsg(size, self._room, self._flags)
        for level, kind, payload in ancillary:
            if (level, kind) == self._rights:
                whole = len(payload) - len(payload) % FD_SIZE
                self.fds += [int.from_bytes(payload[i:i + FD_SIZE], sys.byteorder)
                             for i in range(0, whole, FD_SIZE)]
        if flags & self._ctrunc:
            self.truncated = True
        return data

    def close_fds(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            try:
                posix.close(fd)
            except OSError:
                pass


def read_request(sock) -> tuple:
    """(role, environ dict of CNI_* str, stdin bytes, the pod's netns descriptor or None);
    ProtocolError if malformed.  The descriptor is the caller's to close; on any error
    every descriptor that came with the request is closed here."""
    receiver = _Receiver(sock)
    try:
        role, environ, stdin = _parse_request(receiver)
        if receiver.truncated or len(receiver.fds) > 1:
            raise ProtocolError(f"{len(receiver.fds)}{'+' if receiver.truncated else ''} descriptors "
                                "came with the request; at most one (the pod's network namespace) is "
                                "accepted")
    except BaseException:
        receiver.close_fds()
        raise
    return role, environ, stdin, (receiver.fds[0] if receiver.fds else None)


def _parse_request(sock) -> tuple:
    header = _read_line(sock)
    if not header.startswith(MAGIC):
        raise ProtocolError(f"not a weft request: {header[:20]!r}")
    role = header[len(MAGIC):].decode(errors="replace")
    if role not in ROLES:
        raise ProtocolError(f"unknown role {role!r}")
    env_block = recv_exact(sock, int.from_bytes(recv_exact(sock, 4), "big"))
    stdin = recv_exact(sock, int.from_bytes(recv_exact(sock, 4), "big"))
    environ = {}
    for item in env_block.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep and key.startswith("CNI_"):
            environ[key] = value
    return role, environ, stdin


def encode_reply(stdout: bytes, code: int) -> bytes:
    return code.to_bytes(4, "big", signed=True) + _frame(stdout)
