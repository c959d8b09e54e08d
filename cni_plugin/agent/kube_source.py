"""NetworkPolicy objects from the Kubernetes API server (`weftd --policy-source kubernetes`).

The agent lists, then watches, Namespaces, Pods and NetworkPolicies with its
ServiceAccount (token and CA from /var/run/secrets/kubernetes.io/serviceaccount, the
server from $KUBERNETES_SERVICE_HOST/PORT, or --kube-api-server), over HTTPS with the
standard library's http.client (kube_api.py, shared with the installer; no client library
in the agent's memory; docs/networkpolicy.md says why), and with the same interface as the
etcd registry's
policy keys (rows keyed "<Kind>/[<namespace>/]<name>" holding the object's JSON), so the
policy controller is the same in both modes.

Generations: Kubernetes has one resourceVersion per resource type, not a cluster-wide
revision, so this source numbers the changes it has seen (a listing, then each watch
event) and hands that counter to the controller as the revision.

Watches follow the API's rules: resourceVersion from the listing, bookmarks move it on,
a stream that ends after serving (the server's timeoutSeconds) is opened again at once
from the last version, and "410 Gone" (the version is too old) ends the watch with a
resync: the controller lists again.  A stream that cannot be opened or breaks is opened
again from the last version after a delay that doubles from 100 ms to 5 s, with jitter
(the three watches do not retry in step); a stream that opens but ends before it served
anything counts as a failure, so a server that hangs up at once is not hammered.  A line
that does not parse is counted (`errors("unparsable")`, weft_kube_watch_errors_total),
logged once per kind of problem, and skipped: the watch goes on.  A failing stream is
logged once per outage (once per distinct error until a stream serves again).

Threads: one per watched resource.  Each holds its open connection's socket where
cancel() can reach it: cancel() (and stop(), for every watch of the source) sets the
stop flag, shuts those sockets down, which ends a blocking read at once, and joins the
threads for at most STOP_SECONDS.  Only a connection attempt still in progress (a server
that does not answer SYNs, a slow DNS lookup) can outlast that bound; such a thread
delivers nothing more and ends when its attempt gives up (the source's timeout, 10 s).
`versions` and the change counter are shared by the listing and the three threads and
are only touched under `lock`; events are delivered under it too, so they reach the
controller in counter order (on_event must only queue, never block or call back).

RBAC: get, list, watch on namespaces, pods (core) and networkpolicies
(networking.k8s.io); see conf/kubernetes/.
"""

import http.client
import itertools
import json
import logging
import socket
import threading
import time
import urllib.parse

from ..kube_api import SERVICEACCOUNT_DIR, ApiServer, KubeApiError
from ..subnet.registry import RegistryError
from .runtime import Backoff

RBAC_HINT = "weftd's ServiceAccount needs get/list/watch, see conf/kubernetes/"
RESOURCES = (("Namespace", "/api/v1/namespaces"), ("Pod", "/api/v1/pods"),
             ("NetworkPolicy", "/apis/networking.k8s.io/v1/networkpolicies"))
PAGE = 500
WATCH_SECONDS = 300         # timeoutSeconds asked of the server; the read timeout is 30 s longer
RETRY_FIRST, RETRY_MOST = 0.1, 5.0   # seconds between failed watch attempts: doubling, capped
RETRY_JITTER = 0.2          # each delay is drawn within +-20 % of its nominal value
SERVED_SECONDS = RETRY_MOST  # a stream open this long (or that delivered a line) served
STOP_SECONDS = 5.0          # how long cancel()/stop() wait for the watch threads, together
LOGGED_PROBLEMS = 32        # distinct watch problems logged per source; later ones are only counted
THREAD_PREFIX = "weft-kube-watch"


class ApiError(RegistryError):
    """The API server answered with an HTTP error status."""

    def __init__(self, text: str, status: int):
        super().__init__(text)
        self.status = status


class _Resync(Exception):
    """The watch cannot go on from its version: the controller must list again."""


class _BadLine(ValueError):
    """A watch line that does not parse; the text names the problem, not the line."""


def _parse_line(line: bytes) -> tuple:
    """(type, object, object's metadata) of one watch line, or _BadLine."""
    try:
        event = json.loads(line)
    except ValueError:
        raise _BadLine("not JSON") from None
    if not isinstance(event, dict):
        raise _BadLine("not a JSON object")
    kind_of_event, obj = event.get("type"), event.get("object")
    if not isinstance(kind_of_event, str) or not kind_of_event:
        raise _BadLine("no type")
    if not isinstance(obj, dict):
        raise _BadLine("no object")
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        raise _BadLine("object.metadata is not an object")
    return kind_of_event, obj, meta


def _registry_error(exc: KubeApiError) -> RegistryError:
    return ApiError(str(exc), exc.status) if exc.status is not None else RegistryError(str(exc))


def _list_page(page, path: str) -> dict:
    """A list answer as the code below reads it (an object whose items are objects and
    whose metadata is an object), or a RegistryError naming the path: JSON of another
    shape is the server's mistake, not a crash of the listing."""
    if (not isinstance(page, dict) or not isinstance(page.get("items") or [], list)
            or not isinstance(page.get("metadata") or {}, dict)
            or not all(isinstance(obj, dict) for obj in page.get("items") or [])):
        raise RegistryError(f"the API server's list of {path} is not a Kubernetes list object")
    return page


def _suffix(kind: str, obj: dict) -> str:
    meta = obj.get("metadata") or {}
    parts = [kind] + ([meta.get("namespace") or "default"] if kind != "Namespace" else []) + [meta.get("name", "")]
    return "/".join(str(p) for p in parts)


class KubeSource:
    def __init__(self, server: str = None, serviceaccount_dir: str = SERVICEACCOUNT_DIR, timeout: float = 10.0,
                 errors=None, warn=None):
        """errors(reason): counts a watch problem ("unparsable": a line; "stream": a stream
        that failed); warn(text): logs one.  Both optional."""
        try:
            self.api = ApiServer(server, serviceaccount_dir, timeout, rbac_hint=RBAC_HINT)
        except KubeApiError as exc:
            raise RegistryError(str(exc)) from None
        self.server = self.api.server
        self.errors = errors or (lambda reason: None)
        self.warn = warn or logging.getLogger("weft.kube").warning
        self.lock = threading.Lock()  # guards everything below
        self.counter = itertools.count(1)
        self.versions = {}   # kind -> resourceVersion of the last listing or event
        self._watches = []   # the live _Watch sets, for stop()
        self._logged = set()  # watch problems already logged
        self._counts = {}     # reason -> watch problems counted, for weftctl status

    # -- HTTP (kube_api.py), its errors as the registry's -----------------------------
    def _get(self, path: str, read_timeout: float = None, hold=None):
        """ApiServer.get: RegistryError when the server cannot be reached, ApiError when it
        answers with an error status."""
        try:
            return self.api.get(path, read_timeout, hold)
        except KubeApiError as exc:
            raise _registry_error(exc) from None

    def _get_json(self, path: str):
        try:
            return self.api.get_json(path)
        except KubeApiError as exc:
            raise _registry_error(exc) from None

    # -- the registry's policy interface --------------------------------------------
    def list_policy_objects(self) -> tuple:
        rows, versions = [], {}
        for kind, path in RESOURCES:
            token = ""
            while True:
                query = {"limit": PAGE, **({"continue": token} if token else {})}
                page = _list_page(self._get_json(f"{path}?{urllib.parse.urlencode(query)}"), path)
                for obj in page.get("items") or []:
                    rows.append((_suffix(kind, obj), json.dumps({**obj, "kind": kind,
                                                                  "apiVersion": _api_version(kind)})))
                meta = page.get("metadata") or {}
                token = meta.get("continue") or ""
                if not token:
                    versions[kind] = meta.get("resourceVersion", "")
                    break
        with self.lock:
            self.versions = versions
            return rows, next(self.counter)

    def watch_policy_objects(self, start_revision: int, on_event):
        """Watch the three resources from the last listing's versions, each on its own
        thread; on_event(kind, suffix, JSON, counter), or ("resync", None, reason, 0) once
        when the watch must end and the objects be listed again.  Returns cancel(): when it
        returns the watch threads have ended (see the module's note for the one exception)."""
        watch = _Watch(self, on_event)
        with self.lock:
            self._watches.append(watch)
        watch.start()
        return watch.stop

    def stop(self) -> None:
        """End every watch of this source (as each one's cancel() does)."""
        with self.lock:
            watches = list(self._watches)
        for watch in watches:
            watch.stop()

    # -- shared state, under the lock -------------------------------------------------
    def _version(self, kind: str) -> str:
        with self.lock:
            return self.versions.get(kind, "")

    def _problem(self, reason: str, key: str, text: str) -> None:
        """Count a watch problem; log it the first time it is seen (bounded)."""
        self.errors(reason)
        with self.lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1
            if key in self._logged or len(self._logged) > LOGGED_PROBLEMS:
                return
            self._logged.add(key)
            if len(self._logged) > LOGGED_PROBLEMS:
                text = (f"more than {LOGGED_PROBLEMS} kinds of Kubernetes watch problems: the rest are only "
                        "counted (weft_kube_watch_errors_total)")
        self.warn(text)


    def problems(self) -> dict:
        """{reason: count} of the watch problems seen so far."""
        with self.lock:
            return dict(self._counts)

    def _forget(self, prefix: str) -> None:
        with self.lock:
            self._logged = {key for key in self._logged if not key.startswith(prefix)}


class _Watch:
    """One watch_policy_objects(): a thread per resource, and the sockets they read."""

    def __init__(self, source: KubeSource, on_event):
        self.source, self.on_event = source, on_event
        self.stopping = threading.Event()
        self.sockets = {}   # kind -> the socket of its open connection (under source.lock)
        self.threads = [threading.Thread(target=self._run, args=(kind, path), daemon=True,
                                         name=f"{THREAD_PREFIX} {kind}") for kind, path in RESOURCES]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        with self.source.lock:
            sockets = list(self.sockets.values())
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns now
            except OSError:
                pass  # already closed or never connected
        deadline = time.monotonic() + STOP_SECONDS
        for thread in self.threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self.source.lock:
            if self in self.source._watches:
                self.source._watches.remove(self)

    # -- a watch thread ---------------------------------------------------------------
    def _run(self, kind: str, path: str) -> None:
        backoff = Backoff(RETRY_FIRST, RETRY_MOST, RETRY_JITTER)
        while not self.stopping.is_set():
            try:
                served = self._stream(kind, path)
            except _Resync as exc:
                self._deliver(("resync", None, str(exc), 0), resync=True)
                return
            except Exception as exc:  # RegistryError; anything else is a bug, retried all the same
                if self.stopping.is_set():
                    return
                text = str(exc) if isinstance(exc, RegistryError) else f"internal error: {exc!r}"
                self.source._problem("stream", f"stream {kind} {text}",
                                     f"Kubernetes watch of {kind} failed, retrying from resourceVersion "
                                     f"{self.source._version(kind) or '(none)'}: {text}")
                served = False
            if served:
                if backoff.delay != backoff.low:  # it had failed: the next outage is logged again
                    self.source._forget(f"stream {kind} ")
                backoff.reset()
            elif self.stopping.wait(backoff.next()):
                return

    def _hold(self, kind: str, sock) -> bool:
        with self.source.lock:
            if self.stopping.is_set():
                return False
            self.sockets[kind] = sock
            return True

    def _stream(self, kind: str, path: str) -> bool:
        """One watch request, read to its end.  True when it served (delivered a line, or
        stayed open SERVED_SECONDS); False when it ended at once.  Raises RegistryError
        when it could not be opened or broke, _Resync when the version is too old."""
        query = urllib.parse.urlencode({"watch": "1", "resourceVersion": self.source._version(kind),
                                        "allowWatchBookmarks": "true", "timeoutSeconds": WATCH_SECONDS})
        opened, served = time.monotonic(), False
        try:
            got = self.source._get(f"{path}?{query}", WATCH_SECONDS + 30, hold=lambda sock: self._hold(kind, sock))
            if got is None:
                return True
            conn, response = got
            try:
                for line in response:
                    if self.stopping.is_set():
                        return True
                    if line.strip():
                        self._line(kind, line)
                        served = True
            except (OSError, ValueError, http.client.HTTPException) as exc:
                if self.stopping.is_set():
                    return True
                raise RegistryError(f"Kubernetes watch of {kind} broke: {exc or type(exc).__name__}") from None
            finally:
                conn.close()
        except ApiError as exc:
            if exc.status == 410:  # Gone: the version is too old
                raise _Resync(str(exc)) from None
            raise
        finally:
            with self.source.lock:
                self.sockets.pop(kind, None)
        return served or time.monotonic() - opened >= SERVED_SECONDS

    def _line(self, kind: str, line: bytes) -> None:
        """Deliver one watch line; a line that does not parse is counted and skipped."""
        try:
            kind_of_event, obj, meta = _parse_line(line)
        except _BadLine as exc:
            problem = str(exc)
            excerpt = line[:120].decode(errors="replace").strip()
            self.source._problem("unparsable", f"line {kind} {problem}",
                                 f"Kubernetes watch of {kind}: skipped a line that does not parse ({problem}): "
                                 f"{excerpt!r}")
            return
        if kind_of_event == "ERROR":  # 410 Gone: our version is too old; list again
            raise _Resync(obj.get("message", "watch error"))
        version = meta.get("resourceVersion")
        if kind_of_event == "BOOKMARK":
            self._deliver(None, kind=kind, version=version)
            return
        text = json.dumps({**obj, "kind": kind, "apiVersion": _api_version(kind)})
        self._deliver(("delete" if kind_of_event == "DELETED" else "put", _suffix(kind, obj), text),
                      kind=kind, version=version)

    def _deliver(self, event, kind=None, version=None, resync=False) -> None:
        """Under the source's lock: move kind's version on and hand the event over with
        the next counter value, unless this watch is stopping (a cancelled watch says
        nothing more and leaves the versions to the next listing)."""
        with self.source.lock:
            if self.stopping.is_set():
                return
            if resync:  # the watch ends here: one resync, whichever thread saw it first
                self.stopping.set()
                self.on_event(*event)
                return
            if version:
                self.source.versions[kind] = version
            if event is not None:
                self.on_event(*event, next(self.source.counter))


def _api_version(kind: str) -> str:
    return "networking.k8s.io/v1" if kind == "NetworkPolicy" else "v1"
