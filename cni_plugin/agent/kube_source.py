"""NetworkPolicy objects from the Kubernetes API server (`weftd --policy-source kubernetes`).

The agent lists, then watches, Namespaces, Pods and NetworkPolicies with its
ServiceAccount (token and CA from /var/run/secrets/kubernetes.io/serviceaccount, the
server from $KUBERNETES_SERVICE_HOST/PORT, or --kube-api-server), over plain HTTPS
with the standard library: no client library in the agent's memory, and the same
interface as the etcd registry's policy keys (rows keyed "<Kind>/[<namespace>/]<name>"
holding the object's JSON), so the policy controller is the same in both modes.

Generations: Kubernetes has one resourceVersion per resource type, not a cluster-wide
revision, so this source numbers the changes it has seen (a listing, then each watch
event) and hands that counter to the controller as the revision.

Watches follow the API's rules: resourceVersion from the listing, bookmarks move it
on, a stream that ends is opened again from the last version, and "410 Gone" (the
version is too old) ends the watch with a resync: the controller lists again.
RBAC: get, list, watch on namespaces, pods (core) and networkpolicies
(networking.k8s.io); see conf/kubernetes/.
"""

import itertools
import json
import os
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request

from ..subnet.registry import RegistryError

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
RESOURCES = (("Namespace", "/api/v1/namespaces"), ("Pod", "/api/v1/pods"),
             ("NetworkPolicy", "/apis/networking.k8s.io/v1/networkpolicies"))
PAGE = 500
WATCH_SECONDS = 300


def _suffix(kind: str, obj: dict) -> str:
    meta = obj.get("metadata") or {}
    parts = [kind] + ([meta.get("namespace") or "default"] if kind != "Namespace" else []) + [meta.get("name", "")]
    return "/".join(str(p) for p in parts)


class KubeSource:
    def __init__(self, server: str = None, serviceaccount_dir: str = SERVICEACCOUNT_DIR, timeout: float = 10.0):
        if not server:
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise RegistryError("no Kubernetes API server: $KUBERNETES_SERVICE_HOST is unset (not in a pod?); "
                                    "pass --kube-api-server URL")
            server = f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}"
        self.server = server.rstrip("/")
        self.dir = serviceaccount_dir
        self.timeout = timeout
        self.counter = itertools.count(1)
        self.versions = {}   # kind -> resourceVersion of the last listing or event
        self.lock = threading.Lock()
        self._context = None

    # -- HTTP -----------------------------------------------------------------------
    def _read(self, name: str):
        try:
            with open(os.path.join(self.dir, name), encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError:
            return None

    def _open(self, path: str, timeout: float):
        headers = {"Accept": "application/json"}
        token = self._read("token")  # read every time: kubelet rotates it
        if token:
            headers["Authorization"] = f"Bearer {token}"
        context = None
        if self.server.startswith("https:"):
            if self._context is None:
                ca = os.path.join(self.dir, "ca.crt")
                self._context = ssl.create_default_context(cafile=ca if os.path.exists(ca) else None)
            context = self._context
        request = urllib.request.Request(self.server + path, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout, context=context)
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode(errors="replace").strip()
            hint = " (RBAC: weftd's ServiceAccount needs get/list/watch, see conf/kubernetes/)" \
                if exc.code in (401, 403) else ""
            raise RegistryError(f"Kubernetes API {self.server}{path.split('?')[0]}: HTTP {exc.code}{hint}: "
                                f"{detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(f"Kubernetes API {self.server} unreachable: {reason}") from None

    def _get_json(self, path: str) -> dict:
        with self._open(path, self.timeout) as response:
            try:
                return json.loads(response.read())
            except ValueError as exc:
                raise RegistryError(f"Kubernetes API {self.server}{path}: not JSON: {exc}") from None

    # -- the registry's policy interface --------------------------------------------
    def list_policy_objects(self) -> tuple:
        rows, versions = [], {}
        for kind, path in RESOURCES:
            token = ""
            while True:
                query = {"limit": PAGE, **({"continue": token} if token else {})}
                page = self._get_json(f"{path}?{urllib.parse.urlencode(query)}")
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
        thread; on_event(kind, suffix, JSON, counter).  Returns cancel()."""
        stopping = threading.Event()
        threads = [threading.Thread(target=self._watch, args=(kind, path, on_event, stopping), daemon=True,
                                    name=f"weft-kube-watch {kind}") for kind, path in RESOURCES]
        for thread in threads:
            thread.start()

        def cancel():
            stopping.set()

        return cancel

    def _watch(self, kind, path, on_event, stopping):
        while not stopping.is_set():
            version = self.versions.get(kind, "")
            query = urllib.parse.urlencode({"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true",
                                            "timeoutSeconds": WATCH_SECONDS})
            try:
                with self._open(f"{path}?{query}", WATCH_SECONDS + 30) as stream:
                    for line in stream:
                        if stopping.is_set():
                            return
                        if not self._event(kind, line, on_event):
                            return
            except RegistryError as exc:
                if not stopping.is_set():
                    on_event("resync", None, str(exc), 0)
                return
            except OSError:
                if not stopping.is_set():
                    on_event("resync", None, "watch stream broke", 0)
                return

    def _event(self, kind, line, on_event) -> bool:
        """Deliver one watch line; False when the watch must end (resync sent)."""
        try:
            event = json.loads(line)
            kind_of_event, obj = event["type"], event["object"]
        except (ValueError, KeyError, TypeError):
            return True
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind_of_event == "ERROR":  # 410 Gone: our version is too old; list again
            on_event("resync", None, obj.get("message", "watch error"), 0)
            return False
        if version:
            self.versions[kind] = version
        if kind_of_event == "BOOKMARK":
            return True
        text = json.dumps({**obj, "kind": kind, "apiVersion": _api_version(kind)})
        on_event("delete" if kind_of_event == "DELETED" else "put", _suffix(kind, obj), text, next(self.counter))
        return True


def _api_version(kind: str) -> str:
    return "networking.k8s.io/v1" if kind == "NetworkPolicy" else "v1"
