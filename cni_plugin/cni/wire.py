"""The weft <-> weftd socket protocol, both halves (built-ins only: the client half
runs on every CNI call, before any real import).

Both directions are length-prefixed (4-byte big-endian lengths):
  request:  b"WEFT1 " + role + b"\\n" + len + b"KEY=VALUE\\0..." + len + stdin
  reply:    exit code (4 bytes, signed) + len + stdout
Only CNI_* variables cross the socket.
"""

DEFAULT_SOCKET = "/run/weft/weftd.sock"  # where weftd listens by default; paths.py derives RUN_DIR from it
MAGIC = b"WEFT1 "
ROLES = ("weft", "weft-ipam")
HEADER_LIMIT = 64


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


def read_request(sock) -> tuple:
    """(role, environ dict of CNI_* str, stdin bytes); ProtocolError if malformed."""
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
