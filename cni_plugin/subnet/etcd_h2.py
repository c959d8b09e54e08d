"""Many unary calls of one etcd gRPC method in one round, framed by hand on HTTP/2.

Why: `weftctl leases` needs one LeaseTimeToLive per node (etcd has no call that
returns many leases' TTLs).  Through grpcio each unary call costs ~130 us of client
CPU in its Python layer (futures, locks, call objects); at 5,000 leases that was most
of the command.  The calls here are the same gRPC requests on one HTTP/2 connection
of their own: the header block is encoded once (HPACK literals, never indexed, no
Huffman), each request is a HEADERS and a DATA frame packed with struct, and the
answers are read frame by frame.

What is not done here: header blocks from etcd are never decoded (so the HPACK
dynamic table never matters), which leaves the grpc-status unread.  A call counts as
answered only when its stream carried exactly one uncompressed message: etcd's unary
handlers send a message only on success (grpc-go sends none with an error status).
Everything else (an error status, a reset stream, a GOAWAY, a timeout, a surprise in
the protocol) comes back as None, and the caller asks those through grpcio, which
reports errors properly.  This module is an accelerator, never the only path.
"""

import socket
import ssl
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE = 2, 3, 4
DEFAULT_WINDOW = 65535
MAX_WINDOW = (1 << 31) - 1
FRAME_HEADER = 9
RECEIVE = 1 << 16
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


class ProtocolError(Exception):
    """The peer did something this client does not handle (the caller falls back)."""


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _U32.pack(len(payload))[1:] + bytes((kind, flags)) + _U32.pack(stream) + payload


def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer with an N-bit prefix (RFC 7541 5.1)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(text: bytes) -> bytes:
    return _integer(len(text), 7) + text  # H = 0: no Huffman


def _literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name (RFC 7541 6.2.2)."""
    return b"\x00" + _string(name) + _string(value)


def header_block(tls: bool, authority: str, path: str, metadata, timeout: float) -> bytes:
    """The request header block of every call (the same for all of them)."""
    block = (b"\x83"                                    # :method POST (static index 3)
             + (b"\x87" if tls else b"\x86")            # :scheme https / http (7 / 6)
             + b"\x04" + _string(path.encode())         # :path, name indexed (4), value literal
             + b"\x01" + _string(authority.encode())    # :authority (1)
             + _literal(b"content-type", b"application/grpc")
             + _literal(b"te", b"trailers")
             + _literal(b"grpc-timeout", f"{max(1, int(timeout * 1000))}m".encode()))
    for name, value in metadata:
        block += _literal(name.lower().encode(), value.encode() if isinstance(value, str) else value)
    return block


def _message(data: bytes):
    """The one uncompressed gRPC message of a stream's DATA, else None."""
    if len(data) < 5 or data[0] != 0 or _U32.unpack_from(data, 1)[0] != len(data) - 5:
        return None
    return bytes(data[5:])


def tls_context(cafile: str, certfile: str = None, keyfile: str = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["h2"])
    return context


def unary_many(host: str, port: int, path: str, bodies: list, metadata=(), timeout: float = 5.0,
               context: ssl.SSLContext = None, window: int = 1000) -> list:
    """The answer (encoded message) to each body, None where none came; OSError,
    ssl.SSLError or ProtocolError when the connection itself failed."""
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=host)
            if sock.selected_alpn_protocol() != "h2":
                raise ProtocolError(f"{host}:{port} did not agree to HTTP/2")
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return _Round(sock, header_block(context is not None, authority, path, metadata, timeout),
                      bodies, deadline, window).run()
    finally:
        sock.close()


class _Round:
    def __init__(self, sock, block: bytes, bodies: list, deadline: float, window: int):
        self.sock, self.block, self.bodies, self.deadline = sock, block, bodies, deadline
        self.results = [None] * len(bodies)
        self.data = {}              # open stream id -> DATA received so far
        self.next = 0               # index of the next body to send
        self.limit = window         # streams open at once (the peer may lower it)
        self.send_window = DEFAULT_WINDOW  # connection-level credit for our DATA
        self.stream_window = DEFAULT_WINDOW
        self.settled = False        # the peer's first SETTINGS arrived
        self.last_stream = None     # set by GOAWAY: nothing above it will be answered

    def run(self) -> list:
        settings = b"".join(_SETTING.pack(k, v) for k, v in ((SETTINGS_ENABLE_PUSH, 0),
                                                            (SETTINGS_INITIAL_WINDOW_SIZE, MAX_WINDOW)))
        self.sock.sendall(PREFACE + _frame(SETTINGS, 0, 0, settings)
                          + _frame(WINDOW_UPDATE, 0, 0, _U32.pack(MAX_WINDOW - DEFAULT_WINDOW)))
        buffer = bytearray()
        while True:
            if self.settled:
                self._send_more()
            if not self.data and (self.next >= len(self.bodies) or self.last_stream is not None):
                return self.results
            left = self.deadline - time.monotonic()
            if left <= 0:
                return self.results  # the rest through grpcio
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(RECEIVE)
            except socket.timeout:
                return self.results
            if not chunk:
                return self.results  # the peer closed: what is missing goes through grpcio
            buffer += chunk
            offset = 0
            while len(buffer) - offset >= FRAME_HEADER:
                length = int.from_bytes(buffer[offset:offset + 3], "big")
                end = offset + FRAME_HEADER + length
                if end > len(buffer):
                    break
                self._frame(buffer[offset + 3], buffer[offset + 4],
                            _U32.unpack_from(buffer, offset + 5)[0] & MAX_WINDOW,
                            bytes(buffer[offset + FRAME_HEADER:end]))
                offset = end
            del buffer[:offset]

    def _send_more(self) -> None:
        out = bytearray()
        while self.next < len(self.bodies) and self.last_stream is None and len(self.data) < self.limit:
            body = self.bodies[self.next]
            payload = b"\x00" + _U32.pack(len(body)) + body
            if len(payload) > self.stream_window:
                raise ProtocolError("the peer's stream window is smaller than one request")
            if len(payload) > self.send_window:
                break  # wait for the peer's WINDOW_UPDATE
            stream = 2 * self.next + 1
            out += _frame(HEADERS, END_HEADERS, stream, self.block)
            out += _frame(DATA, END_STREAM, stream, payload)
            self.send_window -= len(payload)
            self.data[stream] = bytearray()
            self.next += 1
        if out:
            self.sock.sendall(out)

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == DATA and stream in self.data:
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]] if payload else b""
            self.data[stream] += payload
            if flags & END_STREAM:
                self._finish(stream)
        elif kind == HEADERS and flags & END_STREAM and stream in self.data:
            self._finish(stream)  # trailers (or trailers only: an error); never decoded
        elif kind == RST_STREAM and stream in self.data:
            del self.data[stream]
        elif kind == SETTINGS and not flags & ACK:
            for offset in range(0, len(payload) - len(payload) % 6, 6):
                key, value = _SETTING.unpack_from(payload, offset)
                if key == SETTINGS_MAX_CONCURRENT_STREAMS:
                    self.limit = max(1, min(self.limit, value))
                elif key == SETTINGS_INITIAL_WINDOW_SIZE:
                    self.stream_window = value
            self.sock.sendall(_frame(SETTINGS, ACK, 0))
            self.settled = True
        elif kind == PING and not flags & ACK:
            self.sock.sendall(_frame(PING, ACK, 0, payload))
        elif kind == GOAWAY:
            self.last_stream = _U32.unpack_from(payload, 0)[0] & MAX_WINDOW if len(payload) >= 4 else 0
            for open_stream in [s for s in self.data if s > self.last_stream]:
                del self.data[open_stream]
        elif kind == WINDOW_UPDATE and stream == 0 and len(payload) >= 4:
            self.send_window += _U32.unpack_from(payload, 0)[0] & MAX_WINDOW

    def _finish(self, stream: int) -> None:
        self.results[(stream - 1) // 2] = _message(self.data.pop(stream))
