"""weft's key layout in etcd: network configs, subnet leases and IP history.

Keys (prefix default /weft):
  <prefix>/networks/<network>/config                  network config JSON (raw text)
  <prefix>/networks/<network>/subnets/<a.b.c.d>-<len>  a node's lease, bound to an etcd lease;
                                                      a key without an etcd lease is a reservation
  <prefix>/networks/<network>/history/<node>/<ts>-<digest>
                                                      one IPAM history record (JSON) per key; ts is
                                                      the record's "ts" in canonical form, digest a
                                                      hash of the record, so uploads are idempotent
  <prefix>/policy/<Kind>/<namespace>/<name>           a NetworkPolicy or Pod object (JSON, as applied)
  <prefix>/policy/Namespace/<name>                    a Namespace object (its labels)
  <prefix>/networks/<network>/policy-status/<node>    what that node's agent has programmed
                                                      (JSON: generation, policies, rules, state)

The connection, failover and watches are etcd_transport.py's; this module only knows keys.
Invalid arguments (names with "/", ttl < 1, lease id 0) raise ValueError.
"""

import hashlib
import json
import logging

from .. import paths
from ..checks import int_in
from ..timestamps import format_ts, parse_ts
from .etcd_transport import EtcdTransport
from .registry import LeaseRow, RegistryError

log = logging.getLogger("weftd.registry")
__all__ = ["EtcdRegistry", "RegistryError"]


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"{kind} {name!r} must be a non-empty string without '/'")
    return name


def history_key_name(record: dict) -> str:
    """<canonical ts>-<digest of the record>: sorts by time, equal records share a key."""
    try:
        ts = format_ts(parse_ts(str(record["ts"])))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"history record without a usable ts ({exc}): {record!r}") from None
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]
    return f"{ts}-{digest}"


class EtcdRegistry:
    """weft's view of etcd (implements registry.Registry); thread-safe."""

    def __init__(self, endpoints, prefix: str = paths.ETCD_PREFIX, cafile=None, certfile=None, keyfile=None,
                 username=None, password=None, timeout: float = 5.0):
        self.etcd = EtcdTransport(endpoints, cafile=cafile, certfile=certfile, keyfile=keyfile,
                                  username=username, password=password, timeout=timeout)
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""

    @property
    def endpoints(self):
        return self.etcd.endpoints

    def connect(self) -> str:
        """Connect now (normally lazy); returns the URL of the endpoint in use."""
        return self.etcd.connect()

    def close(self) -> None:
        """Cancel every watch (no resync) and close the connection; later calls raise."""
        self.etcd.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- keys ----

    def network_prefix(self, network: str) -> str:
        return f"{self.prefix}/networks/{check_name('network', network)}/"

    def config_key(self, network: str) -> str:
        return self.network_prefix(network) + "config"

    def subnets_prefix(self, network: str) -> str:
        return self.network_prefix(network) + "subnets/"

    def history_prefix(self, network: str) -> str:
        return self.network_prefix(network) + "history/"

    def lease_key(self, network: str, key_suffix: str) -> str:
        return self.subnets_prefix(network) + check_name("lease key", key_suffix)

    # ---- network configs ----

    def get_network_config(self, network: str):
        """The raw config JSON text, or None when the network has no config key."""
        key = self.config_key(network)
        value = self.etcd.get(key.encode(), f"read {key}")
        return value.decode() if value is not None else None

    def put_network_config(self, network: str, text: str) -> None:
        key = self.config_key(network)
        self.etcd.put(key.encode(), text.encode(), f"write {key}")

    def network_names(self) -> list:
        """Names of the networks that have a config key, sorted."""
        base = f"{self.prefix}/networks/"
        kvs, _ = self.etcd.range_prefix(base.encode(), "list networks", keys_only=True)
        names = []
        for key, _, _ in kvs:
            name, _, rest = key.decode()[len(base):].partition("/")
            if rest == "config":
                names.append(name)
        return sorted(names)

    # ---- leases ----

    def list_leases(self, network: str):
        """([LeaseRow(key_suffix, value, etcd lease id or 0 for a reservation, create
        revision)], header revision)."""
        prefix = self.subnets_prefix(network)
        kvs, revision = self.etcd.range_prefix(prefix.encode(), f"list the leases of network {network}",
                                               create_revisions=True)
        return [LeaseRow(key.decode()[len(prefix):], value.decode(errors="replace"), lease, created)
                for key, value, lease, created in kvs], revision

    def create_lease(self, network: str, key_suffix: str, value: str, ttl: int, listed_at: int = 0):
        """Grant a ttl-second etcd lease and bind key to it iff the key does not exist
        (and, with listed_at, iff no lease key of the network changed after that revision:
        the caller chose the subnet from a listing at listed_at).

        Returns the etcd lease id, or None when the key exists or the leases changed (the
        granted lease is revoked).
        On a RegistryError after the grant the lease is revoked best effort (else it expires).
        """
        if not int_in(ttl, 1):
            raise ValueError(f"lease ttl {ttl!r} must be a positive number of seconds")
        key = self.lease_key(network, key_suffix)
        lease_id = self.etcd.grant(ttl)
        try:
            guard = self.subnets_prefix(network).encode() if listed_at else b""
            created = self.etcd.create_if_absent(key.encode(), value.encode(), lease_id, f"create {key}",
                                                 unchanged_prefix=guard, since_revision=listed_at)
        except RegistryError:
            self.etcd.revoke_quietly(lease_id)
            raise
        if created:
            return lease_id
        self.etcd.revoke_quietly(lease_id)
        return None

    def update_lease(self, network: str, key_suffix: str, value: str, lease_id: int) -> bool:
        """Overwrite the value iff the key is still bound to lease_id; False otherwise."""
        if not lease_id:
            raise ValueError("update_lease needs the etcd lease id the key is bound to (not 0)")
        key = self.lease_key(network, key_suffix)
        return self.etcd.update_if_lease(key.encode(), value.encode(), lease_id, f"update {key}")

    def refresh(self, lease_id: int) -> int:
        """Send one keepalive; the TTL etcd granted again, 0 when the lease is gone (no raise)."""
        return self.etcd.keepalive(lease_id)

    def lease_ttl(self, lease_id: int) -> int:
        """Seconds the lease has left, -1 when it is gone."""
        return self.etcd.time_to_live(lease_id)

    def lease_ttls(self, lease_ids) -> dict:
        """{lease id: seconds left, -1 when gone} for many leases, read in one round."""
        return self.etcd.time_to_live_many(lease_ids)

    def revoke(self, lease_id: int) -> None:
        self.etcd.revoke(lease_id)

    def delete_lease_key(self, network: str, key_suffix: str) -> None:
        key = self.lease_key(network, key_suffix)
        self.etcd.delete(key.encode(), f"delete {key}")

    def watch_leases(self, network: str, start_revision: int, on_event):
        """Watch the network's lease keys from start_revision in a background thread.

        on_event(kind, key_suffix, value, revision, create_revision) with kind "put" or
        "delete" (value "" and create_revision 0 on delete; revision is the event's mod
        revision), in etcd's order, called from the watch thread.  When the start revision is
        compacted, etcd cancels the watch, or the stream breaks (etcd down or restarted, the
        connection dropped by a failed call, close()), on_event("resync", None, None, rev) is
        called once (rev = the compact revision, else 0; create_revision 0) and the watch ends: re-list and watch
        again.  Returns cancel(): stops without a resync, joins the thread, idempotent.
        Raises RegistryError at once when etcd cannot be reached or denies reading the prefix.
        """
        return self.etcd.watch_prefix(self.subnets_prefix(network), start_revision, on_event)

    def watch_config(self, network: str, start_revision: int, on_event):
        """Watch the network's config key; on_event as for watch_leases (key "" for the
        config itself; keys that merely start with "config" are dropped)."""
        key = self.config_key(network)

        def exact(kind, suffix, value, revision, created):
            if kind == "resync" or suffix == "":
                on_event(kind, suffix, value, revision, created)

        return self.etcd.watch_prefix(key, start_revision, exact)

    # ---- IP history ----

    def put_history(self, network: str, node: str, records: list) -> int:
        """Store records under history/<node>/; idempotent; returns how many were stored.

        A record without a parseable "ts" is skipped with a warning (a corrupt journal line
        must not stall the upload of everything after it).
        """
        base = self.history_prefix(network) + check_name("node", node) + "/"
        values = {}
        for record in records:
            try:
                values[base + history_key_name(record)] = json.dumps(record, sort_keys=True)
            except ValueError as exc:
                log.warning("not publishing history record of %s on %s: %s", node, network, exc)
        items = sorted(values.items())
        self.etcd.put_many([(k.encode(), v.encode()) for k, v in items], f"write history of {node} on {network}")
        return len(items)

    def history(self, network=None) -> list:
        """All history records (of one network, or of all), sorted by ts then node; each
        carries "node" and "network" (taken from its key when the record lacks them)."""
        base = f"{self.prefix}/networks/"
        scope = self.history_prefix(network) if network is not None else base
        kvs, _ = self.etcd.range_prefix(scope.encode(), f"read the history of {network or 'all networks'}")
        return self._history_records(base, kvs)

    @staticmethod
    def _history_records(base: str, kvs) -> list:
        records = []
        for key, value, _ in kvs:
            parts = key.decode()[len(base):].split("/")   # network, "history", node, name
            if len(parts) != 4 or parts[1] != "history":
                continue
            try:
                record = json.loads(value)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                log.warning("skipping unreadable history record %s", key.decode())
                continue
            record.setdefault("network", parts[0])
            record.setdefault("node", parts[2])
            canonical_ts = parts[3].rpartition("-")[0]
            records.append((canonical_ts, parts[2], record))
        return [record for _, _, record in sorted(records, key=lambda item: item[:2])]

    def list_history(self, network: str) -> tuple:
        """(the network's history records as history() gives them, the revision read at)."""
        base = f"{self.prefix}/networks/"
        kvs, revision = self.etcd.range_prefix(self.history_prefix(network).encode(),
                                               f"read the history of {network}")
        return self._history_records(base, kvs), revision

    def watch_history(self, network: str, start_revision: int, on_event):
        """Watch the network's history keys (as watch_leases): on_event(kind, "<node>/<name>",
        record JSON, revision); returns cancel()."""
        return self.etcd.watch_prefix(self.history_prefix(network), start_revision, on_event)

    def delete_history_before(self, network: str, iso_ts: str) -> int:
        """Delete the network's history records with ts strictly before iso_ts; the count."""
        cutoff = format_ts(parse_ts(iso_ts))
        base = self.history_prefix(network)
        kvs, _ = self.etcd.range_prefix(base.encode(), f"list the history of {network}", keys_only=True)
        nodes = sorted({key.decode()[len(base):].split("/")[0] for key, _, _ in kvs})
        deleted = 0
        for node in nodes:
            deleted += self.etcd.delete(f"{base}{node}/".encode(), f"trim the history of {node}",
                                        range_end=f"{base}{node}/{cutoff}".encode())
        return deleted

    # ---- NetworkPolicy objects (cluster-wide: every network enforces the same objects) ----

    def put_policy_status(self, network: str, node: str, text: str) -> None:
        key = self.network_prefix(network) + "policy-status/" + check_name("node", node)
        self.etcd.put(key.encode(), text.encode(), f"write {key}")

    def policy_statuses(self, network: str) -> dict:
        """{node: status JSON text} of every agent serving the network."""
        base = self.network_prefix(network) + "policy-status/"
        kvs, _ = self.etcd.range_prefix(base.encode(), f"read the policy status of {network}")
        return {key.decode()[len(base):]: value.decode(errors="replace") for key, value, _ in kvs}

    def policy_prefix(self) -> str:
        return f"{self.prefix}/policy/"

    def policy_key(self, kind: str, namespace, name: str) -> str:
        """<prefix>/policy/<Kind>/<namespace>/<name>; Namespaces have no namespace part."""
        parts = [check_name("kind", kind)]
        if namespace is not None:
            parts.append(check_name("namespace", namespace))
        parts.append(check_name("name", name))
        return self.policy_prefix() + "/".join(parts)

    def put_policy_objects(self, items: list) -> int:
        """[(kind, namespace or None, name, JSON text)], in as few transactions as etcd
        allows; the revision they are stored at (agents report it as their generation)."""
        return self.etcd.put_many([(self.policy_key(k, ns, n).encode(), text.encode()) for k, ns, n, text in items],
                           f"store {len(items)} policy object(s)")

    def delete_policy_objects(self, items: list) -> int:
        """[(kind, namespace or None, name)]; how many keys existed and went."""
        deleted = 0
        for kind, namespace, name in items:
            key = self.policy_key(kind, namespace, name)
            deleted += self.etcd.delete(key.encode(), f"delete {key}")
        return deleted

    def list_policy_objects(self) -> tuple:
        """([(key suffix "<Kind>/[<namespace>/]<name>", JSON text)], revision)."""
        prefix = self.policy_prefix()
        kvs, revision = self.etcd.range_prefix(prefix.encode(), "list the policy objects")
        return [(key.decode()[len(prefix):], value.decode(errors="replace")) for key, value, _ in kvs], revision

    def watch_policy_objects(self, start_revision: int, on_event):
        """Watch every policy object (as watch_leases): on_event(kind, key suffix, JSON, revision)."""
        return self.etcd.watch_prefix(self.policy_prefix(), start_revision, on_event)
