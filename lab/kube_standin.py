"""A stand-in for the Kubernetes API server: serves recorded list and watch responses.

    python -m lab.kube_standin ADDRESS PORT RECORDING.json TOKEN

RECORDING holds {"lists": {path: [page, ...]}, "watches": {path: [[line, ...], ...]}}:
a list request gets page n+1 when it carries `continue=<n>`; the k-th watch request on
a path gets the k-th recorded stream (newline-delimited events), then empty streams
that end after a second.  Every request must carry `Authorization: Bearer TOKEN`
(else 403, as an API server refuses a ServiceAccount without RBAC).  The paths it saw
are appended to `seen` (and printed as JSON lines on stdout when run as a program).
"""

import json
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class StandIn:
    def __init__(self, address: str, port: int, recording: dict, token: str, echo=False):
        self.recording, self.token, self.echo = recording, token, echo
        self.seen, self.watch_count = [], {}
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server's naming
                standin.handle(self)

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def start(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def handle(self, req):
        url = urllib.parse.urlsplit(req.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.seen.append({"path": url.path, "query": query})
        if self.echo:
            print(json.dumps(self.seen[-1]), flush=True)
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            return self._send(req, 403, {"kind": "Status", "code": 403, "reason": "Forbidden",
                                         "message": f"cannot list resource at {url.path}"})
        if query.get("watch") == "1":
            count = self.watch_count.get(url.path, 0)
            self.watch_count[url.path] = count + 1
            streams = self.recording.get("watches", {}).get(url.path, [])
            req.send_response(200)
            req.send_header("Content-Type", "application/json")
            req.end_headers()
            if count < len(streams):
                for line in streams[count]:
                    req.wfile.write((json.dumps(line) + "\n").encode())
                    req.wfile.flush()
            else:
                time.sleep(1.0)
            return None
        pages = self.recording.get("lists", {}).get(url.path)
        if pages is None:
            return self._send(req, 404, {"kind": "Status", "code": 404, "message": f"{url.path} not found"})
        index = int(query.get("continue") or 0)
        return self._send(req, 200, pages[index])

    @staticmethod
    def _send(req, code, body):
        data = json.dumps(body).encode()
        req.send_response(code)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)


if __name__ == "__main__":
    with open(sys.argv[3]) as handle:
        recorded = json.load(handle)
    standin = StandIn(sys.argv[1], int(sys.argv[2]), recorded, sys.argv[4], echo=True)
    print(json.dumps({"listening": standin.port}), flush=True)
    standin.server.serve_forever()
