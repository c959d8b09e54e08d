"""The Kubernetes API server as a pod reaches it, over the standard library's http.client.

Where it is: a URL given (weftd's and weftctl's --kube-api-server), else the in-cluster
address kubelet puts in every pod's environment, https://$KUBERNETES_SERVICE_HOST:
$KUBERNETES_SERVICE_PORT.  Who asks: the pod's ServiceAccount, whose `token` (read at
every request: kubelet rotates it) and `ca.crt` live in SERVICEACCOUNT_DIR.

Two users: weftd's NetworkPolicy source (agent/kube_source.py: paged lists and long
watches) and the installer's look at its own Node (cli/node_runtime.py: one read,
bounded in size and time).  Every failure is a KubeApiError whose `status` is the HTTP
status the server answered with, or None when it could not be reached, its answer was
cut short, too big, too slow or not JSON.
"""

import http.client
import json
import os
import ssl
import threading
import time
import urllib.parse

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVER_FLAG = "--kube-api-server"
_CHUNK = 64 * 1024


class KubeApiError(Exception):
    def __init__(self, text: str, status: int = None):
        super().__init__(text)
        self.status = status


def in_cluster_server() -> str:
    """https://HOST:PORT from the variables kubelet sets in a pod; KubeApiError outside one."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeApiError(f"no Kubernetes API server: $KUBERNETES_SERVICE_HOST is unset (not in a pod?); "
                           f"pass {SERVER_FLAG} URL")
    return f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}"


class ApiServer:
    def __init__(self, server: str = None, serviceaccount_dir: str = SERVICEACCOUNT_DIR, timeout: float = 10.0,
                 rbac_hint: str = ""):
        """server: a URL, or None for the in-cluster address.  timeout: seconds to connect,
        and for each read unless a request says otherwise.  rbac_hint: what a 401/403 answer
        adds to its message (which permissions the ServiceAccount needs)."""
        self.server = (server or in_cluster_server()).rstrip("/")
        url = urllib.parse.urlsplit(self.server)
        try:
            port = url.port
        except ValueError:
            port = -1
        if url.scheme not in ("http", "https") or not url.hostname or port == -1:
            raise KubeApiError(f"Kubernetes API server {server!r} is not an http(s)://HOST[:PORT] URL")
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, port or (443 if self._https else 80)
        self._prefix = url.path
        self.dir = serviceaccount_dir
        self.timeout = timeout
        self.rbac_hint = rbac_hint
        self._lock = threading.Lock()  # guards _context: several watch threads share one server
        self._context = None

    def _read(self, name: str):
        try:
            with open(os.path.join(self.dir, name), encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError:
            return None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if not self._https:
            return http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        with self._lock:
            if self._context is None:
                ca = os.path.join(self.dir, "ca.crt")
                self._context = ssl.create_default_context(cafile=ca if os.path.exists(ca) else None)
            context = self._context
        return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=context)

    def get(self, path: str, read_timeout: float = None, hold=None):
        """GET path: the connection and its 2xx response, or KubeApiError.  Connecting may
        take `timeout` seconds, each read read_timeout (default: the same).  hold(sock), when
        given, is called with the connected socket before the request is sent; when it
        returns False (the caller is stopping) the connection is closed and None returned."""
        headers = {"Accept": "application/json"}
        token = self._read("token")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn = self._connection(self.timeout)
        try:
            conn.connect()
            if read_timeout is not None:
                conn.sock.settimeout(read_timeout)
            if hold is not None and not hold(conn.sock):
                conn.close()
                return None
            conn.request("GET", self._prefix + path, headers=headers)
            response = conn.getresponse()
            if 200 <= response.status < 300:
                return conn, response
            detail = response.read(300).decode(errors="replace").strip()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise KubeApiError(f"Kubernetes API {self.server} unreachable: {exc or type(exc).__name__}") from None
        conn.close()
        hint = f" (RBAC: {self.rbac_hint})" if response.status in (401, 403) and self.rbac_hint else ""
        raise KubeApiError(f"Kubernetes API {self.server}{path.split('?')[0]}: HTTP {response.status}{hint}: "
                           f"{detail}", response.status)

    def get_json(self, path: str, limit: int = None, within: float = None):
        """GET path and parse its JSON answer.  limit: the most bytes read (a longer answer
        is refused); within: the seconds from the connection's opening to the answer's last
        byte (each read is cut at the time left; connecting is bounded by `timeout`).
        Neither: read it all, each read bounded by `timeout`."""
        opened = []  # (socket, when): http.client drops conn.sock once the server says close

        def hold(sock):
            opened.append((sock, time.monotonic()))
            return True

        conn, response = self.get(path, read_timeout=within, hold=hold)
        where = f"Kubernetes API {self.server}{path.split('?')[0]}"
        sock, connected = opened[0]
        try:
            if limit is None and within is None:
                body = response.read()
            else:
                deadline = connected + within if within is not None else None
                body = self._read_bounded(sock, response, limit, deadline, where)
        except (OSError, http.client.HTTPException) as exc:
            raise KubeApiError(f"{where}: answer cut short: {exc or type(exc).__name__}") from None
        finally:
            conn.close()
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise KubeApiError(f"{where}: not JSON: {exc}") from None

    @staticmethod
    def _read_bounded(sock, response, limit, deadline, where) -> bytes:
        chunks, size = [], 0
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise KubeApiError(f"{where}: no complete answer within the time allowed")
                sock.settimeout(left)
            chunk = response.read1(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                raise KubeApiError(f"{where}: answer longer than {limit} bytes")
