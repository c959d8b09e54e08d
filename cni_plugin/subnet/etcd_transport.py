"""The etcd transport: connections, failover, deadlines, auth, watches (the only etcd3/grpc user).

Connection: the client talks to one endpoint at a time and connects lazily on the first
call, trying the endpoints in order until one answers Status.  A failure that points at
the endpoint (unreachable, deadline, TLS, "no leader") closes that connection and the next
call starts with the next endpoint.  Every RPC has the `timeout` deadline.  An expired auth
token ("invalid auth token") is renewed once and the call retried.

Every etcd/gRPC failure surfaces as RegistryError naming the endpoint and the cause.
Operations take and return plain bytes/ints: nothing above this module sees etcd3's types.
"""

import concurrent.futures
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

# gRPC's C core logs to stderr on its own (e.g. "ssl_transport_security_utils.cc:115]
# Corruption detected."); every failure reaches the caller as a RegistryError instead.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
import grpc  # noqa: E402

# etcd3 0.12's generated protobuf modules only load with the pure-Python protobuf runtime
# (upb refuses them: "Descriptors cannot be created directly"); the choice is made when
# google.protobuf is first imported, so this must run before anything imports protobuf.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
with warnings.catch_warnings():  # ~100 DeprecationWarnings about descriptor creation
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import etcd3  # noqa: E402
        from etcd3 import etcdrpc  # noqa: E402
    except TypeError as exc:  # protobuf was imported earlier with its upb runtime
        raise ImportError("etcd3 needs PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python before "
                          f"google.protobuf is first imported: {str(exc).splitlines()[0]}") from None

from . import etcd_h2  # noqa: E402
from .registry import RegistryError  # noqa: E402

# gRPC's blocking waits (a watch stream's next message, a future's result) wake every
# grpc._common.MAXIMUM_WAIT_TIMEOUT (0.1 s) so that the main thread's signal handlers
# can run.  Their waits end the moment a message, a cancel, a deadline or a channel
# close arrives (gRPC notifies them); only a signal handler of a main thread blocked in
# gRPC (weftctl's Ctrl-C) waits up to the slice.  Each wake-up costs ~0.1 ms of CPU here.
WAIT_SLICE = 1.0
# weftd's main thread never calls gRPC (it waits on its stop event), so nothing there
# needs the slice: its four idle watch threads would still wake 4 times a second,
# ~4.8 ms of CPU per quiet 10 s reconcile interval (measured per thread, N = 100).
AGENT_WAIT_SLICE = 3600.0
if getattr(grpc._common, "MAXIMUM_WAIT_TIMEOUT", WAIT_SLICE) < WAIT_SLICE:
    grpc._common.MAXIMUM_WAIT_TIMEOUT = WAIT_SLICE


def wait_for_notifications_only() -> None:
    """For a process whose main thread never blocks in gRPC (weftd): blocking waits
    wake on gRPC's notifications, not on a slice."""
    grpc._common.MAXIMUM_WAIT_TIMEOUT = max(grpc._common.MAXIMUM_WAIT_TIMEOUT, AGENT_WAIT_SLICE)


log = logging.getLogger("weftd.etcd")

DEFAULT_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PAGE_SIZE = 500          # keys per range request (keeps responses far below gRPC's 4 MiB)
TXN_MAX_OPS = 100        # etcd refuses transactions above --max-txn-ops (default 128)
RAW_TTL, RAW_RANGE = "/etcdserverpb.Lease/LeaseTimeToLive", "/etcdserverpb.KV/Range"
TTL_WINDOW = 1000        # lease TTL requests in flight at once (time_to_live_many)
HAND_FRAMED_MIN = 64     # from this many TTLs on, the round is framed by hand (etcd_h2)
# connections the hand-framed round spreads over: etcd then answers on more than one of
# its cores (5,000 TTLs here: 579 ms on one connection, 472 on two, 453 on four)
HAND_FRAMED_CONNECTIONS = 2
WATCH_JOIN_TIMEOUT = 5.0
REQUIRE_LEADER = (("hasleader", "true"),)  # etcd's rpctypes.MetadataRequireLeaderKey
GRPC_OPTIONS = [
    ("grpc.enable_http_proxy", 0),             # etcd is never reached through an HTTP proxy
    ("grpc.keepalive_time_ms", 30_000),        # etcd's --grpc-keepalive-min-time is 5 s
    ("grpc.keepalive_timeout_ms", 10_000),     # a silent partition breaks a watch within ~40 s
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]
# gRPC codes after which the endpoint is abandoned and the next call tries the next one.
_ENDPOINT_FAILURES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                      grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.CANCELLED}
# How gRPC reports TLS trouble; a server that wants a client certificate we did not send
# shows up as "Unwrap failed (TSI_DATA_CORRUPTED)" after the handshake.
_TLS_WORDS = ("ssl", "tls", "tsi_", "handshake", "certificate", "unwrap")


@dataclass(frozen=True)
class Endpoint:
    url: str
    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def grpc_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


def parse_endpoint(text: str) -> Endpoint:
    """http://host:port or https://host:port (no scheme means http, no port means 2379)."""
    raw = text.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port or 2379
    except ValueError as exc:
        raise RegistryError(f"invalid etcd endpoint {text!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise RegistryError(f"invalid etcd endpoint {text!r}: expected http(s)://host:port")
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return Endpoint(f"{parts.scheme}://{shown}:{port}", parts.scheme, host, port)


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that selects every key starting with prefix."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


class _Connection:
    """One etcd3 client (gRPC channel + auth token) to one endpoint; raw RPCs with deadlines.

    Only the channel and the token come from etcd3: its own methods attach the token as call
    credentials, which gRPC refuses on plain-text channels (UNAUTHENTICATED "Established
    channel does not have a sufficient security level to transfer call credential."), and
    they drop gRPC's error details; here the token travels as metadata on every call.
    """

    def __init__(self, endpoint: Endpoint, client, timeout: float):
        self.endpoint = endpoint
        self.client = client
        self.timeout = timeout
        self.watch_stub = etcdrpc.WatchStub(client.channel)
        self._raw = {}

    @property
    def metadata(self):
        """The auth token (if any) and etcd's "require leader" flag on every call: a member
        that lost its quorum answers "etcdserver: no leader" at once (and cancels our
        watches within a few election timeouts) instead of stalling them, so the agent
        moves to another endpoint or reports etcd unavailable."""
        return (self.client.metadata or ()) + REQUIRE_LEADER

    def unary(self, stub, method: str, request):
        return getattr(stub, method)(request, timeout=self.timeout, metadata=self.metadata)

    def kv(self, method: str, request):
        return self.unary(self.client.kvstub, method, request)

    def lease(self, method: str, request):
        return self.unary(self.client.leasestub, method, request)

    def status(self):
        return self.unary(self.client.maintenancestub, "Status", etcdrpc.StatusRequest())

    def raw(self, method: str):
        """A unary method on bytes (request and response left encoded), e.g.
        "/etcdserverpb.Lease/LeaseTimeToLive"."""
        if method not in self._raw:
            self._raw[method] = self.client.channel.unary_unary(method)
        return self._raw[method]

    def keepalive_once(self, lease_id: int):
        stream = self.client.leasestub.LeaseKeepAlive(
            iter([etcdrpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=self.timeout, metadata=self.metadata)
        try:
            response = next(stream, None)
        finally:
            stream.cancel()
        if response is None:
            raise RegistryError(f"etcd at {self.endpoint.url} ended the keepalive of lease {lease_id:x} "
                                "without an answer")
        return response

    def reauthenticate(self, username: str, password: str) -> None:
        response = etcdrpc.AuthStub(self.client.channel).Authenticate(
            etcdrpc.AuthenticateRequest(name=username, password=password), timeout=self.timeout)
        self.client.metadata = (("token", response.token),)

    def close(self) -> None:
        self.client.close()


class EtcdTransport:
    """Plain operations on one etcd cluster; thread-safe (see the module docstring)."""

    def __init__(self, endpoints, cafile=None, certfile=None, keyfile=None, username=None, password=None,
                 timeout: float = 5.0):
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        self.endpoints = [parse_endpoint(e) for e in endpoints if e.strip()]
        if not self.endpoints:
            raise RegistryError("no etcd endpoint given")
        if bool(certfile) != bool(keyfile):
            raise RegistryError("etcd client certificate and key must be given together")
        if (username is None) != (password is None):
            raise RegistryError("etcd username and password must be given together")
        plain = [e.url for e in self.endpoints if e.scheme != "https"]
        if plain and (cafile or certfile):
            raise RegistryError(f"etcd TLS files are given but endpoint(s) {', '.join(plain)} use plain "
                                "http: the certificates would be ignored and traffic sent unencrypted; "
                                "write the endpoints as https://host:port (or drop the TLS flags)")
        self.cafile, self.certfile, self.keyfile = cafile, certfile, keyfile
        self.username, self.password = username, password
        self.timeout = timeout
        self._lock = threading.RLock()
        self._conn = None
        self._next = 0               # index of the endpoint tried first on the next connect
        self._closed = False
        self._watches = set()

    # ---- key-value ----

    def get(self, key: bytes, what: str):
        """The value at key, or None."""
        request = etcdrpc.RangeRequest(key=key)
        response = self._call(what, lambda c: c.kv("Range", request))
        return response.kvs[0].value if response.kvs else None

    def put(self, key: bytes, value: bytes, what: str) -> None:
        request = etcdrpc.PutRequest(key=key, value=value)
        self._call(what, lambda c: c.kv("Put", request))

    def range_prefix(self, prefix: bytes, what: str, keys_only: bool = False, create_revisions: bool = False):
        """([(key, value, lease id)] under prefix, read page by page at one revision, revision);
        create_revisions: each row also carries the key's create revision (4-tuples)."""
        # the answers are decoded by hand (_range_page): the pure-Python protobuf runtime
        # etcd3 needs took ~40 us per key, 0.2 s for a listing of 5,000 leases
        key, end = prefix, prefix_end(prefix)
        kvs, revision = [], 0
        while True:
            request = etcdrpc.RangeRequest(key=key, range_end=end, limit=PAGE_SIZE, revision=revision,
                                           keys_only=keys_only).SerializeToString()
            answer = self._call(what, lambda c: c.raw(RAW_RANGE)(request, timeout=c.timeout, metadata=c.metadata))
            page, header_revision, more = _range_page(answer)
            revision = revision or header_revision
            kvs.extend(page if create_revisions else [row[:3] for row in page])
            if not more or not page:
                return kvs, revision
            key = page[-1][0] + b"\0"

    def count_prefix(self, prefix: bytes, what: str) -> int:
        request = etcdrpc.RangeRequest(key=prefix, range_end=prefix_end(prefix), count_only=True)
        return int(self._call(what, lambda c: c.kv("Range", request)).count)

    def create_if_absent(self, key: bytes, value: bytes, lease_id: int, what: str,
                         unchanged_prefix: bytes = b"", since_revision: int = 0) -> bool:
        """Put key (bound to lease_id) iff it does not exist, in one transaction.

        unchanged_prefix/since_revision: also require that no key under the prefix was
        created or modified after since_revision (a range Compare, etcd >= 3.3), so a
        decision made from a listing at that revision still holds when the key is written.
        """
        compare = [etcdrpc.Compare(key=key, target=etcdrpc.Compare.VERSION,
                                   result=etcdrpc.Compare.EQUAL, version=0)]
        if unchanged_prefix:
            # every key in the range must satisfy it; an empty range compares as revision 0
            compare.append(etcdrpc.Compare(key=unchanged_prefix, range_end=prefix_end(unchanged_prefix),
                                           target=etcdrpc.Compare.MOD, result=etcdrpc.Compare.LESS,
                                           mod_revision=since_revision + 1))
        request = etcdrpc.TxnRequest(
            compare=compare,
            success=[etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key, value=value, lease=lease_id))])
        return self._call(what, lambda c: c.kv("Txn", request)).succeeded

    def update_if_lease(self, key: bytes, value: bytes, lease_id: int, what: str) -> bool:
        """Overwrite key iff it is still bound to lease_id; False otherwise (or lease gone)."""
        request = etcdrpc.TxnRequest(
            compare=[etcdrpc.Compare(key=key, target=etcdrpc.Compare.LEASE,
                                     result=etcdrpc.Compare.EQUAL, lease=lease_id)],
            success=[etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key, value=value, lease=lease_id))])
        try:
            return self._call(what, lambda c: c.kv("Txn", request)).succeeded
        except _LeaseNotFound:
            return False

    def put_many(self, items: list, what: str, lease_id: int = 0) -> int:
        """[(key, value)] in transactions of at most TXN_MAX_OPS puts (bound to lease_id
        when given; an item (key, value, lease id) names its own); the revision of the last."""
        revision = 0
        for start in range(0, len(items), TXN_MAX_OPS):
            ops = [etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
                       key=item[0], value=item[1], lease=item[2] if len(item) > 2 else lease_id))
                   for item in items[start:start + TXN_MAX_OPS]]
            request = etcdrpc.TxnRequest(success=ops)
            revision = self._call(what, lambda c: c.kv("Txn", request)).header.revision
        return revision

    def delete(self, key: bytes, what: str, range_end: bytes = b"") -> int:
        """Delete key (or [key, range_end)); how many keys went."""
        request = etcdrpc.DeleteRangeRequest(key=key, range_end=range_end)
        return int(self._call(what, lambda c: c.kv("DeleteRange", request)).deleted)

    # ---- leases ----

    def grant(self, ttl: int) -> int:
        request = etcdrpc.LeaseGrantRequest(TTL=ttl)
        return self._call(f"grant a {ttl}s lease", lambda c: c.lease("LeaseGrant", request)).ID

    def grant_many(self, ttl: int, count: int) -> list:
        """`count` new leases of ttl seconds (their ids), the requests in flight at once
        in windows of TTL_WINDOW (a benchmark's thousands of synthetic nodes)."""
        request = etcdrpc.LeaseGrantRequest(TTL=ttl)
        ids = []
        while len(ids) < count:
            size = min(TTL_WINDOW, count - len(ids))
            ids += self._call(f"grant {size} leases", lambda c: [
                response.ID for response in _in_flight(c.client.leasestub.LeaseGrant, [request] * size, c)])
        return ids

    def keepalive(self, lease_id: int) -> int:
        """Send one keepalive; the TTL etcd granted again, 0 when the lease is gone."""
        response = self._call(f"keep lease {lease_id:x} alive", lambda c: c.keepalive_once(lease_id))
        return max(int(response.TTL), 0)

    def time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left, -1 when it is gone."""
        request = etcdrpc.LeaseTimeToLiveRequest(ID=lease_id)
        return int(self._call(f"read lease {lease_id:x}", lambda c: c.lease("LeaseTimeToLive", request)).TTL)

    def time_to_live_many(self, lease_ids) -> dict:
        """{lease id: seconds left, -1 when gone} for many leases in one round: every
        request is in flight at once on the one channel (gRPC futures), in windows of
        TTL_WINDOW, instead of one round trip per lease."""
        ids = sorted({int(i) for i in lease_ids if i})
        ttls = self._ttls_framed_by_hand(ids) if len(ids) >= HAND_FRAMED_MIN else {}
        rest = [lease_id for lease_id in ids if lease_id not in ttls]
        for start in range(0, len(rest), TTL_WINDOW):
            window = rest[start:start + TTL_WINDOW]
            ttls.update(self._call(f"read {len(window)} leases", lambda c: self._ttl_window(c, window)))
        return ttls

    def _ttls_framed_by_hand(self, ids) -> dict:
        """What etcd_h2 could read of the TTLs on the current endpoint; the rest (errors,
        an endpoint that refuses the connection) is left to grpcio."""
        conn = self._connect()
        endpoint = conn.endpoint
        try:
            context = etcd_h2.tls_context(self.cafile or DEFAULT_CA_BUNDLE, self.certfile, self.keyfile) \
                if endpoint.tls else None
            parts = [ids[k::HAND_FRAMED_CONNECTIONS] for k in range(HAND_FRAMED_CONNECTIONS)]
            with concurrent.futures.ThreadPoolExecutor(len(parts)) as pool:
                answers = list(pool.map(lambda part: etcd_h2.unary_many(
                    endpoint.host, endpoint.port, RAW_TTL, [_varint_field(1, lease_id) for lease_id in part],
                    metadata=conn.metadata, timeout=self.timeout, context=context, window=TTL_WINDOW), parts))
        except (OSError, etcd_h2.ProtocolError) as exc:  # ssl.SSLError is an OSError
            log.debug("TTLs framed by hand failed on %s (%s); asking through grpcio", endpoint.url, exc)
            return {}
        ttls = {}
        for part, got in zip(parts, answers):
            for lease_id, answer in zip(part, got):
                if answer is not None:
                    try:
                        ttls[lease_id] = _ttl_of(answer)
                    except RegistryError:  # a truncated answer: grpcio asks again
                        pass
        return ttls

    @staticmethod
    def _ttl_window(conn, ids) -> dict:
        # raw bytes in and out: the message is one varint each way, and the pure-Python
        # protobuf runtime etcd3 needs costs more than the round trip at thousands of rows
        answers = _in_flight(conn.raw(RAW_TTL), [_varint_field(1, lease_id) for lease_id in ids], conn)
        return {lease_id: _ttl_of(answer) for lease_id, answer in zip(ids, answers)}

    def revoke(self, lease_id: int) -> None:
        """Revoke the lease (its keys vanish); a lease that is already gone is fine."""
        request = etcdrpc.LeaseRevokeRequest(ID=lease_id)
        try:
            self._call(f"revoke lease {lease_id:x}", lambda c: c.lease("LeaseRevoke", request))
        except _LeaseNotFound:
            pass

    # ---- watches ----

    def watch_prefix(self, prefix: str, start_revision: int, on_event):
        """See EtcdRegistry.watch_leases; returns cancel()."""
        # A cheap read first: it renews an expired auth token (etcd cancels a watch created
        # with one: "invalid auth token") and reports a missing permission synchronously.
        self.count_prefix(prefix.encode(), f"watch {prefix}")
        conn = self._connect()
        watch = _PrefixWatch(conn, prefix, start_revision, on_event, self._forget_watch)
        with self._lock:
            self._watches.add(watch)
        watch.start()
        return watch.cancel

    # ---- connection ----

    def connect(self) -> str:
        """Connect now (normally lazy); returns the URL of the endpoint in use."""
        return self._connect().endpoint.url

    def close(self) -> None:
        """Cancel every watch (no resync) and close the connection; later calls raise."""
        with self._lock:
            self._closed = True
            watches, self._watches = list(self._watches), set()
            conn, self._conn = self._conn, None
        for watch in watches:
            watch.cancel()
        if conn is not None:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _connect(self) -> _Connection:
        with self._lock:
            if self._closed:
                raise RegistryError("the etcd registry is closed")
            if self._conn is not None:
                return self._conn
            failures = []
            for step in range(len(self.endpoints)):
                index = (self._next + step) % len(self.endpoints)
                endpoint = self.endpoints[index]
                try:
                    self._conn = self._open(endpoint)
                except RegistryError as exc:
                    if getattr(exc, "final", False):
                        raise
                    failures.append(str(exc))
                    continue
                self._next = index
                return self._conn
            if len(failures) == 1:
                raise RegistryError(failures[0])
            raise RegistryError("no etcd endpoint answered: " + "; ".join(failures))

    def _open(self, endpoint: Endpoint) -> _Connection:
        """A connection that answered Status, or RegistryError (final=True for bad credentials)."""
        try:
            client = etcd3.client(host=endpoint.grpc_host, port=endpoint.port, timeout=self.timeout,
                                  user=self.username, password=self.password,
                                  grpc_options=GRPC_OPTIONS, **self._tls_files(endpoint))
        except OSError as exc:
            raise RegistryError(f"cannot read the TLS files for {endpoint.url}: {exc}") from None
        except grpc.RpcError as exc:
            raise self._error(exc, endpoint, "authenticate") from None
        conn = _Connection(endpoint, client, self.timeout)
        try:
            conn.status()
        except grpc.RpcError as exc:
            conn.close()
            raise self._error(exc, endpoint, "answer status") from None
        return conn

    def _tls_files(self, endpoint: Endpoint) -> dict:
        if not endpoint.tls:
            return {}
        files = {"ca_cert": self.cafile or DEFAULT_CA_BUNDLE}
        if self.certfile:
            files.update(cert_cert=self.certfile, cert_key=self.keyfile)
        return files

    def _call(self, what: str, rpc):
        """rpc(connection) with failover bookkeeping and one token renewal; RegistryError."""
        for attempt in range(2):
            conn = self._connect()
            try:
                return rpc(conn)
            except grpc.RpcError as exc:
                if attempt == 0 and self.username and _is_expired_token(exc):
                    self._renew_token(conn)
                    continue
                if exc.code() == grpc.StatusCode.NOT_FOUND and "lease not found" in (exc.details() or ""):
                    raise _LeaseNotFound(exc.details()) from None
                if exc.code() in _ENDPOINT_FAILURES:
                    self._drop(conn)
                raise self._error(exc, conn.endpoint, what) from None
            except ValueError as exc:
                if "closed channel" not in str(exc):   # "Cannot invoke RPC on closed channel!"
                    raise
                if self._closed:
                    raise RegistryError("the etcd registry is closed") from None
                self._drop(conn)
                raise RegistryError(f"etcd at {conn.endpoint.url}: {what} failed: {exc}") from None

    def _renew_token(self, conn: _Connection) -> None:
        try:
            conn.reauthenticate(self.username, self.password)
        except grpc.RpcError as exc:
            raise self._error(exc, conn.endpoint, "authenticate") from None

    def _drop(self, conn: _Connection) -> None:
        """Abandon a failing endpoint: the next call connects, starting with the next one."""
        with self._lock:
            if self._conn is conn:
                self._conn = None
                self._next = (self.endpoints.index(conn.endpoint) + 1) % len(self.endpoints)
        conn.close()

    def _forget_watch(self, watch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def revoke_quietly(self, lease_id: int) -> None:
        try:
            self.revoke(lease_id)
        except RegistryError as exc:
            log.warning("could not revoke unused lease %x (it expires by itself): %s", lease_id, exc)

    def _error(self, exc: grpc.RpcError, endpoint: Endpoint, what: str) -> RegistryError:
        """A RegistryError that names the endpoint and explains the gRPC failure."""
        code, details = exc.code(), exc.details() or ""
        user = self.username
        final = False
        if code == grpc.StatusCode.UNAVAILABLE and endpoint.tls and any(w in details.lower() for w in _TLS_WORDS):
            message = f"TLS handshake with {endpoint.url} failed: {details}"
            if "CERTIFICATE_VERIFY_FAILED" in details:
                message += f" (is {self.cafile or DEFAULT_CA_BUNDLE} the CA that signed etcd's certificate?)"
            elif "TSI_DATA_CORRUPTED" in details and not self.certfile:
                message += " (no client certificate was given: etcd probably requires one)"
        elif code == grpc.StatusCode.UNAVAILABLE:
            message = f"etcd at {endpoint.url} is unreachable: {details}"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            message = f"etcd at {endpoint.url} did not {what} within {self.timeout:g}s"
        elif "authentication failed" in details or "invalid auth token" in details:
            message, final = f"etcd at {endpoint.url} rejected the credentials for user {user}: {details}", True
        elif "user name is empty" in details:
            message, final = (f"etcd at {endpoint.url} requires a username and password: {details}", True)
        elif "authentication is not enabled" in details:
            message, final = (f"etcd at {endpoint.url} has authentication disabled, "
                              f"but user {user} was given: {details}", True)
        elif code == grpc.StatusCode.PERMISSION_DENIED:
            message = f"etcd at {endpoint.url} denied user {user or '(none)'} to {what}: {details}"
        else:
            message = f"etcd at {endpoint.url} failed to {what}: {code.name}: {details}"
        error = RegistryError(message)
        error.final = final
        return error


def _in_flight(method, requests: list, conn) -> list:
    """The answers to `requests` on one unary method, every request sent before the
    first answer is awaited (gRPC futures on the one channel)."""
    futures = [method.future(request, timeout=conn.timeout, metadata=conn.metadata) for request in requests]
    try:
        return [future.result() for future in futures]
    finally:
        for future in futures:
            future.cancel()


def _varint_field(number: int, value: int) -> bytes:
    """One protobuf varint field (int64: negative values take ten bytes)."""
    value &= (1 << 64) - 1
    out = bytearray([number << 3])
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(data: bytes):
    """(field number, value) of one encoded protobuf message: an int for a varint, bytes
    for a length-delimited field (fixed-width fields are skipped)."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _read_varint(data, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            yield key >> 3, value
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > end:
                raise RegistryError("etcd sent a truncated answer")
            yield key >> 3, data[pos:pos + length]
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise RegistryError(f"etcd sent an unreadable answer (wire type {wire})")


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _ttl_of(data: bytes) -> int:
    """The TTL (field 3, int64) of an encoded LeaseTimeToLiveResponse; other fields skipped."""
    ttl = 0
    for number, value in _fields(data):
        if number == 3:
            ttl = _int64(value)
    return ttl


def _range_page(data: bytes) -> tuple:
    """([(key, value, lease, create revision)], header revision, more) of an encoded
    RangeResponse (header = 1 {revision = 3}, kvs = 2, more = 3; KeyValue: key = 1,
    create_revision = 2, value = 5, lease = 6)."""
    rows, revision, more = [], 0, False
    for number, value in _fields(data):
        if number == 2:
            key, created, kv_value, lease = b"", 0, b"", 0
            for field, item in _fields(value):
                if field == 1:
                    key = item
                elif field == 2:
                    created = _int64(item)
                elif field == 5:
                    kv_value = item
                elif field == 6:
                    lease = _int64(item)
            rows.append((key, kv_value, lease, created))
        elif number == 1:
            for field, item in _fields(value):
                if field == 3:
                    revision = _int64(item)
        elif number == 3:
            more = bool(value)
    return rows, revision, more


def _read_varint(data: bytes, pos: int) -> tuple:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise RegistryError("etcd sent a truncated answer")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


class _LeaseNotFound(RegistryError):
    """etcd: requested lease not found (internal: mapped to False/ignored by the callers)."""


def _is_expired_token(exc: grpc.RpcError) -> bool:
    return exc.code() == grpc.StatusCode.UNAUTHENTICATED and "invalid auth token" in (exc.details() or "")


class _PrefixWatch:
    """One watch stream on its own thread; see EtcdRegistry.watch_leases."""

    def __init__(self, conn: _Connection, prefix: str, start_revision: int, on_event, on_end):
        self.conn = conn
        self.prefix = prefix
        self.start_revision = max(int(start_revision), 0)
        self.on_event = on_event
        self.on_end = on_end
        self.stopping = threading.Event()    # set by cancel(): end silently
        self.finished = threading.Event()    # set when the stream is over: request iterator ends
        self.call = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"weft-watch {prefix}")

    def start(self) -> None:
        key = self.prefix.encode()
        create = etcdrpc.WatchCreateRequest(key=key, range_end=prefix_end(key),
                                            start_revision=self.start_revision)
        try:
            self.call = self.conn.watch_stub.Watch(self._requests(create), metadata=self.conn.metadata)
        except ValueError as exc:  # channel closed meanwhile
            self.finished.set()
            self.on_end(self)
            raise RegistryError(f"etcd at {self.conn.endpoint.url}: cannot watch {self.prefix}: {exc}") from None
        self.thread.start()

    def cancel(self) -> None:
        self.stopping.set()
        self.finished.set()
        if self.call is not None:
            self.call.cancel()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(WATCH_JOIN_TIMEOUT)

    def _requests(self, create):
        yield etcdrpc.WatchRequest(create_request=create)
        self.finished.wait()

    def _run(self) -> None:
        resync_revision = 0
        try:
            for response in self.call:
                if self.stopping.is_set():
                    return
                if response.compact_revision:  # we fell behind a compaction: re-list
                    resync_revision = response.compact_revision
                    log.warning("watch on %s fell behind etcd's compaction at revision %d; "
                                "relisting", self.prefix, response.compact_revision)
                    break
                if response.canceled:
                    log.warning("etcd cancelled the watch on %s: %s", self.prefix,
                                response.cancel_reason or "no reason given")
                    break
                for event in response.events:
                    self._deliver(event)
        except grpc.RpcError as exc:
            if not self.stopping.is_set():
                log.warning("watch on %s at %s broke: %s: %s", self.prefix, self.conn.endpoint.url,
                            exc.code().name, exc.details())
        finally:
            self.finished.set()
            self.on_end(self)
            if self.call is not None:
                self.call.cancel()
        if not self.stopping.is_set():
            self._notify("resync", None, None, resync_revision, 0)

    def _deliver(self, event) -> None:
        kind = "delete" if event.type == event.DELETE else "put"
        suffix = event.kv.key.decode()[len(self.prefix):]
        value = event.kv.value.decode(errors="replace") if kind == "put" else ""
        self._notify(kind, suffix, value, event.kv.mod_revision,
                     event.kv.create_revision if kind == "put" else 0)

    def _notify(self, *args) -> None:
        try:
            self.on_event(*args)
        except Exception:  # a faulty handler must not kill the watch
            log.exception("lease watch handler failed on %s", args[:2])
