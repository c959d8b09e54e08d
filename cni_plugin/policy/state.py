"""What one agent knows of the cluster's policy world, pure (no etcd, no kernel).

Two inputs, both keyed as they are stored:
- objects: "<Kind>/[<namespace>/]<name>" -> the raw object (JSON text) from the policy
  store (etcd mode) or the API server (Kubernetes mode); an object that does not parse
  is kept out and reported (`rejected`), never half-used;
- holders: which pod holds which address, from the allocation records weft publishes
  (allocate/release per IP, with the K8S_POD_NAMESPACE/K8S_POD_NAME of the ADD).

`cluster()` gives the verdict model (policy.verdict.Cluster) and `endpoints()` every
known pod address with its Pod (labels from its Pod object; none when there is none).
"""

import ipaddress
import json

from .objects import Namespace, NetworkPolicy, Pod, PolicyError, parse_object
from .verdict import Cluster, Endpoint


def object_key(obj) -> tuple:
    """(kind, namespace or None, name) of a parsed object: its identity in the store."""
    if isinstance(obj, NetworkPolicy):
        return ("NetworkPolicy", obj.namespace, obj.name)
    if isinstance(obj, Pod):
        return ("Pod", obj.namespace, obj.name)
    if isinstance(obj, Namespace):
        return ("Namespace", None, obj.name)
    raise TypeError(f"not a policy object: {obj!r}")


def key_suffix(kind: str, namespace, name: str) -> str:
    return "/".join(p for p in (kind, namespace, name) if p is not None)


class PolicyState:
    def __init__(self):
        self.objects = {}    # key suffix -> parsed object
        self.rejected = {}   # key suffix -> reason
        self.holders = {}    # ip address -> (namespace, name, node)
        self.generation = 0  # store revision of the newest object change applied
        self._cluster = None  # the verdict model, until an object changes
        self.texts = {}       # key suffix -> the stored text (for digest())
        self.since = {}       # ip -> ts of the newest record applied to it

    # -- objects ----------------------------------------------------------------
    def load_objects(self, rows, revision: int = 0) -> None:
        self.objects, self.rejected, self._cluster, self.texts = {}, {}, None, {}
        for suffix, text in rows:
            self.put_object(suffix, text)
        self.generation = max(self.generation, revision)

    def put_object(self, suffix: str, text: str, revision: int = 0) -> None:
        self._cluster = None
        self.texts[suffix] = text
        try:
            raw = json.loads(text)
            obj = parse_object(raw)
            if key_suffix(*object_key(obj)) != suffix:
                raise PolicyError(f"the object names itself {key_suffix(*object_key(obj))}")
        except (ValueError, PolicyError) as exc:
            self.objects.pop(suffix, None)
            self.rejected[suffix] = str(exc)
        else:
            self.rejected.pop(suffix, None)
            self.objects[suffix] = obj
        self.generation = max(self.generation, revision)

    def delete_object(self, suffix: str, revision: int = 0) -> None:
        self._cluster = None
        self.texts.pop(suffix, None)
        self.objects.pop(suffix, None)
        self.rejected.pop(suffix, None)
        self.generation = max(self.generation, revision)

    def digest(self) -> str:
        """A short digest of the objects held: equal on every node that holds the same
        objects, however it got them (a listing or a run of watch events)."""
        import hashlib

        return hashlib.sha256(json.dumps(sorted(self.texts.items())).encode()).hexdigest()[:12]

    def _of(self, cls) -> list:
        return [o for o in self.objects.values() if isinstance(o, cls)]

    @property
    def policies(self) -> list:
        return sorted(self._of(NetworkPolicy), key=lambda p: p.ref)

    # -- holders -------------------------------------------------------------------
    def load_holders(self, records) -> None:
        self.holders, self.since = {}, {}
        for record in sorted(records, key=lambda r: str(r.get("ts", ""))):
            self.record(record)

    def record(self, record: dict) -> bool:
        """Apply one allocation record; True when the holder of its address changed."""
        try:
            ip = ipaddress.ip_address(str(record.get("ip")))
        except ValueError:
            return False
        before = self.holders.get(ip)
        ts = str(record.get("ts") or "")
        if ts and ts < self.since.get(ip, ""):
            return False  # older than what we know of the address (e.g. a late release of its last pod)
        if ts:
            self.since[ip] = ts
        if record.get("event") == "allocate":
            namespace, name = record.get("podNamespace"), record.get("podName")
            if isinstance(namespace, str) and isinstance(name, str) and namespace and name:
                self.holders[ip] = (namespace, name, record.get("node"))
            else:  # no pod identity (e.g. cnitool by hand): not a pod policies can select
                self.holders.pop(ip, None)
        elif record.get("event") == "release":
            self.holders.pop(ip, None)
        return self.holders.get(ip) != before

    # -- the model -------------------------------------------------------------------
    def pod(self, namespace: str, name: str) -> Pod:
        found = self.objects.get(key_suffix("Pod", namespace, name))
        return found if found is not None else Pod(namespace, name, ())

    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = Cluster(self._of(Namespace), self.policies)
        return self._cluster

    def endpoints(self) -> dict:
        """{ip address: Pod} of every address a pod holds."""
        return {ip: self.pod(ns, name) for ip, (ns, name, _) in self.holders.items()}

    def endpoint(self, text: str, node_addresses=()) -> Endpoint:
        """An Endpoint from "namespace/name" or an address (ValueError naming it)."""
        if "/" in text and not _is_network(text):
            namespace, _, name = text.partition("/")
            ips = sorted((ip for ip, (ns, n, _) in self.holders.items() if (ns, n) == (namespace, name)),
                         key=lambda ip: (ip.version, ip))
            if not ips:
                raise ValueError(f"pod {text} holds no address in the allocation records")
            return Endpoint.of(ips[0], self.pod(namespace, name))
        ip = ipaddress.ip_address(text)
        holder = self.holders.get(ip)
        pod = self.pod(holder[0], holder[1]) if holder else None
        return Endpoint.of(ip, pod, node=str(ip) in set(map(str, node_addresses)))


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return False
