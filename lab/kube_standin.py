"""A stand-in for the Kubernetes API server: serves recorded list and watch responses.

    python -m lab.kube_standin ADDRESS PORT RECORDING.json TOKEN

RECORDING holds {"lists": {path: [page, ...]}, "watches": {path: [[line, ...], ...]}}:
a list request gets page n+1 when it carries `continue=<n>`; the k-th watch request on
a path gets the k-th recorded stream (newline-delimited events: an object is sent as
JSON, a string as it is, so a recording can hold lines that do not parse), then what
`idle` says: "end" (the default) empty streams that end after a second, "hold" streams
that stay open and send nothing until stop().  `watch_status` (an HTTP status), when
set, answers every watch request with that error instead (a failing server; it may be
changed while serving).  Every request must carry `Authorization: Bearer TOKEN` (else
403, as an API server refuses a ServiceAccount without RBAC).  The requests it saw are
appended to `seen` with their monotonic time `at` (and printed as JSON lines on stdout
when run as a program); `holding` counts the watch streams held open now.
`tls=(certfile, keyfile)` serves HTTPS (self_signed() makes a pair, its certificate also
the ServiceAccount's ca.crt).

RECORDING may also hold {"objects": {path: value}}: single objects for a plain GET (a Node
at /api/v1/nodes/<name>): a dict is sent as JSON, a string as it is (an answer that is no
JSON, or too big), a list of strings as one answer sent part by part, DRIP_SECONDS apart
(a server that trickles), None holds the request open without an answer until stop().
"""

import json
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOLD_SECONDS = 600  # a held stream's bound, should stop() never come
DRIP_SECONDS = 0.2  # between the parts of a trickled answer


class StandIn:
    def __init__(self, address: str, port: int, recording: dict, token: str, echo=False, idle="end",
                 watch_status=None, tls=None):
        self.recording, self.token, self.echo = recording, token, echo
        self.idle, self.watch_status = idle, watch_status
        self.seen, self.watch_count = [], {}
        self.lock = threading.Lock()
        self.holding = 0
        self.closing = threading.Event()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's naming
                standin.handle(self)

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    def start(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def watches(self, path: str) -> list:
        """The watch requests seen on path, in order."""
        return [s for s in list(self.seen) if s["path"] == path and s["query"].get("watch") == "1"]

    def handle(self, req):
        url = urllib.parse.urlsplit(req.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.seen.append({"path": url.path, "query": query, "at": time.monotonic()})
        if self.echo:
            print(json.dumps(self.seen[-1]), flush=True)
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(req, 403, {"kind": "Status", "code": 403, "reason": "Forbidden",
                                         "message": f"cannot list resource at {url.path}"})
        if query.get("watch") == "1":
            return self._watch(req, url.path)
        objects = self.recording.get("objects", {})
        if url.path in objects:
            return self._object(req, objects[url.path])
        pages = self.recording.get("lists", {}).get(url.path)
        if pages is None:
            return self._send(req, 404, {"kind": "Status", "code": 404, "message": f"{url.path} not found"})
        index = int(query.get("continue") or 0)
        return self._send(req, 200, pages[index])

    def _watch(self, req, path):
        status = self.watch_status
        if status:
            return self._send(req, status, {"kind": "Status", "code": status, "message": "recorded failure"})
        with self.lock:
            count = self.watch_count.get(path, 0)
            self.watch_count[path] = count + 1
        streams = self.recording.get("watches", {}).get(path, [])
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.end_headers()
        if count < len(streams):
            for line in streams[count]:
                req.wfile.write((line if isinstance(line, str) else json.dumps(line)).encode() + b"\n")
                req.wfile.flush()
        elif self.idle == "hold":
            self._hold()
        else:
            time.sleep(1.0)

    def _hold(self):
        """Keep the request open, saying nothing, until stop() (counted in `holding`)."""
        with self.lock:
            self.holding += 1
        try:
            self.closing.wait(HOLD_SECONDS)
        finally:
            with self.lock:
                self.holding -= 1

    def _object(self, req, value):
        if value is None:
            return self._hold()
        if isinstance(value, dict):
            return self._send(req, 200, value)
        parts = [part.encode() for part in (value if isinstance(value, list) else [value])]
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(sum(map(len, parts))))
        req.end_headers()
        for number, part in enumerate(parts):
            if number and self.closing.wait(DRIP_SECONDS):
                return None
            req.wfile.write(part)
            req.wfile.flush()
        return None

    @staticmethod
    def _send(req, code, body):
        data = json.dumps(body).encode()
        req.send_response(code)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)


def self_signed(directory, address="127.0.0.1") -> tuple:
    """(certfile, keyfile) of a fresh self-signed certificate for `address`, written into
    `directory` as ca.crt (where a ServiceAccount directory keeps its CA) and standin.key."""
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-standin")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = os.path.join(directory, "ca.crt"), os.path.join(directory, "standin.key")
    with open(certfile, "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyfile, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return certfile, keyfile


if __name__ == "__main__":
    with open(sys.argv[3]) as handle:
        recorded = json.load(handle)
    standin = StandIn(sys.argv[1], int(sys.argv[2]), recorded, sys.argv[4], echo=True)
    print(json.dumps({"listening": standin.port}), flush=True)
    standin.server.serve_forever()
