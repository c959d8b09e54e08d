"""The etcd transport: connections, failover, deadlines, auth, watches (the only grpc user).

Calls go through the stubs generated from etcd_api/etcd.proto (messages parsed by
protobuf's C runtime, upb), on grpcio's asyncio API.  Each transport owns one event loop
on a daemon thread ("weft-etcd-loop", started by the first call) and one channel to the
endpoint in use; every RPC runs on that loop, and the synchronous methods below hand
their work to it and wait for the answer.  Why asyncio: a blocking gRPC wait in grpcio's
synchronous API (a watch stream's next message, a future's result) wakes every 0.1 s so
that signal handlers can run, ~8 ms of CPU per idle watch per 10 s; the asyncio channel
waits in the C core until something arrives and costs nothing while etcd is quiet.  A
blocking caller waits on a concurrent.futures.Future, which Ctrl-C interrupts.

Connection: the endpoint in use answered Status (after Authenticate, with a username);
the first call connects, trying the endpoints in order.  A failure that points at the
endpoint (see etcd_errors: unreachable, deadline, TLS, "no leader") closes its channel
and the next call starts with the next endpoint.  Every RPC has the `timeout` deadline.
An expired auth token is renewed once and the call retried.

Watches: one stream per watched prefix, read by a task on the loop; its events are
handed, in order, to a thread of the watch's own ("weft-watch <prefix>"), which calls
the handler, so a slow or blocking handler never holds up the loop or other watches.

Every etcd/gRPC failure surfaces as RegistryError naming the endpoint and the cause
(judged as etcd_errors says: status code first, then etcd's own message table).
Operations take and return plain bytes/ints: nothing above this module sees gRPC types.
"""

import asyncio
import logging
import os
import queue
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

# gRPC's C core logs to stderr on its own (e.g. "ssl_transport_security_utils.cc:115]
# Corruption detected."); every failure reaches the caller as a RegistryError instead.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
import grpc  # noqa: E402
from grpc import aio  # noqa: E402

from . import etcd_errors  # noqa: E402
from .etcd_api import etcd_pb2 as pb  # noqa: E402
from .etcd_api import etcd_pb2_grpc as rpc  # noqa: E402
from .registry import RegistryError  # noqa: E402

log = logging.getLogger("weftd.etcd")

DEFAULT_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PAGE_SIZE = 500          # keys per range request (keeps responses far below gRPC's 4 MiB)
TXN_MAX_OPS = 100        # etcd refuses transactions above --max-txn-ops (default 128)
WINDOW = 1000            # unary requests in flight at once (grant_many, time_to_live_many)
LISTING_ATTEMPTS = 3     # a paged listing whose revision is compacted meanwhile starts over
WATCH_JOIN_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0      # close() waits this long for the loop to close the channel
PROBE_TIMEOUT = 1.0      # the TCP probe that tells a refused TLS handshake from a dead port
REQUIRE_LEADER = (("hasleader", "true"),)  # etcd's rpctypes.MetadataRequireLeaderKey
GRPC_OPTIONS = [
    ("grpc.enable_http_proxy", 0),             # etcd is never reached through an HTTP proxy
    ("grpc.keepalive_time_ms", 30_000),        # etcd's --grpc-keepalive-min-time is 5 s
    ("grpc.keepalive_timeout_ms", 10_000),     # a silent partition breaks a watch within ~40 s
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


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
    def target(self) -> str:
        """host:port as gRPC names it ([v6]:port)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


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


class _Loop:
    """An asyncio event loop on a daemon thread of its own; run() waits for a coroutine."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="weft-etcd-loop")
        self.thread.start()

    def run(self, coroutine, timeout=None):
        """The coroutine's result, run on the loop; its exception raised here."""
        if threading.current_thread() is self.thread:
            coroutine.close()
            raise RuntimeError("a blocking etcd call from the transport's own loop would wait for itself")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def soon(self, callback, *args) -> None:
        """callback(*args) on the loop, from any thread; nothing once the loop is closed."""
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nothing left there to do
            pass

    def stop(self) -> None:
        self.soon(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(CLOSE_TIMEOUT)
            if not self.thread.is_alive():
                self.loop.close()


class _Connection:
    """One channel to one endpoint, its stubs, and the auth token its calls carry."""

    def __init__(self, endpoint: Endpoint, channel, timeout: float):
        self.endpoint = endpoint
        self.channel = channel
        self.timeout = timeout
        self.token = None
        self.kv = rpc.KVStub(channel)
        self.lease = rpc.LeaseStub(channel)
        self.watch = rpc.WatchStub(channel)
        self.auth = rpc.AuthStub(channel)
        self.maintenance = rpc.MaintenanceStub(channel)

    @property
    def metadata(self) -> tuple:
        """The auth token (if any) and etcd's "require leader" flag on every call: a member
        that lost its quorum answers "etcdserver: no leader" at once (and cancels our
        watches within a few election timeouts) instead of stalling them, so the agent
        moves to another endpoint or reports etcd unavailable.  The token travels as
        metadata, not as call credentials: gRPC refuses those on plain-text channels."""
        return ((("token", self.token),) if self.token else ()) + REQUIRE_LEADER

    def unary(self, method, request):
        """The call (awaitable) of a unary method with this connection's deadline and metadata."""
        return method(request, timeout=self.timeout, metadata=self.metadata)


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
        self._lock = threading.Lock()   # guards _loop, _closed and _watches
        self._loop = None
        self._closed = False
        self._watches = set()
        # used on the loop only
        self._conn = None
        self._next = 0                  # index of the endpoint tried first on the next connect
        self._connecting = None         # asyncio.Lock, made on the loop

    # ---- key-value ----

    def get(self, key: bytes, what: str):
        """The value at key, or None."""
        async def op(conn):
            response = await conn.unary(conn.kv.Range, pb.RangeRequest(key=key))
            return response.kvs[0].value if response.kvs else None
        return self._call(what, op)

    def put(self, key: bytes, value: bytes, what: str) -> None:
        async def op(conn):
            await conn.unary(conn.kv.Put, pb.PutRequest(key=key, value=value))
        self._call(what, op)

    def range_prefix(self, prefix: bytes, what: str, keys_only: bool = False, create_revisions: bool = False):
        """([(key, value, lease id)] under prefix, read page by page at one revision, revision);
        create_revisions: each row also carries the key's create revision (4-tuples)."""
        async def op(conn):
            for attempt in range(LISTING_ATTEMPTS):
                try:
                    return await self._list(conn, prefix, keys_only, create_revisions)
                except grpc.RpcError as exc:
                    error = etcd_errors.lookup(exc.code().name, exc.details() or "")
                    if attempt + 1 < LISTING_ATTEMPTS and error is not None and \
                            error.message == "etcdserver: mvcc: required revision has been compacted":
                        continue  # compacted between two pages: read it all again, at a new revision
                    raise
        return self._call(what, op)

    @staticmethod
    async def _list(conn, prefix: bytes, keys_only: bool, create_revisions: bool) -> tuple:
        key, end = prefix, prefix_end(prefix)
        rows, revision = [], 0
        while True:
            response = await conn.unary(conn.kv.Range, pb.RangeRequest(
                key=key, range_end=end, limit=PAGE_SIZE, revision=revision, keys_only=keys_only))
            revision = revision or response.header.revision
            kvs = response.kvs
            if create_revisions:
                rows.extend([(kv.key, kv.value, kv.lease, kv.create_revision) for kv in kvs])
            else:
                rows.extend([(kv.key, kv.value, kv.lease) for kv in kvs])
            if not response.more or not kvs:
                return rows, revision
            key = kvs[-1].key + b"\0"

    def count_prefix(self, prefix: bytes, what: str) -> int:
        async def op(conn):
            response = await conn.unary(conn.kv.Range, pb.RangeRequest(
                key=prefix, range_end=prefix_end(prefix), count_only=True))
            return int(response.count)
        return self._call(what, op)

    def create_if_absent(self, key: bytes, value: bytes, lease_id: int, what: str,
                         unchanged_prefix: bytes = b"", since_revision: int = 0) -> bool:
        """Put key (bound to lease_id) iff it does not exist, in one transaction.

        unchanged_prefix/since_revision: also require that no key under the prefix was
        created or modified after since_revision (a range Compare, etcd >= 3.3), so a
        decision made from a listing at that revision still holds when the key is written.
        """
        compare = [pb.Compare(key=key, target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=0)]
        if unchanged_prefix:
            # every key in the range must satisfy it; an empty range compares as revision 0
            compare.append(pb.Compare(key=unchanged_prefix, range_end=prefix_end(unchanged_prefix),
                                      target=pb.Compare.MOD, result=pb.Compare.LESS,
                                      mod_revision=since_revision + 1))
        request = pb.TxnRequest(compare=compare, success=[
            pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease_id))])

        async def op(conn):
            return (await conn.unary(conn.kv.Txn, request)).succeeded
        return self._call(what, op)

    def update_if_lease(self, key: bytes, value: bytes, lease_id: int, what: str) -> bool:
        """Overwrite key iff it is still bound to lease_id; False otherwise (or lease gone)."""
        request = pb.TxnRequest(
            compare=[pb.Compare(key=key, target=pb.Compare.LEASE, result=pb.Compare.EQUAL, lease=lease_id)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease_id))])

        async def op(conn):
            return (await conn.unary(conn.kv.Txn, request)).succeeded
        try:
            return self._call(what, op)
        except _LeaseNotFound:
            return False

    def put_many(self, items: list, what: str, lease_id: int = 0) -> int:
        """[(key, value)] in transactions of at most TXN_MAX_OPS puts (bound to lease_id
        when given; an item (key, value, lease id) names its own); the revision of the last."""
        requests = [pb.TxnRequest(success=[
                        pb.RequestOp(request_put=pb.PutRequest(
                            key=item[0], value=item[1], lease=item[2] if len(item) > 2 else lease_id))
                        for item in items[start:start + TXN_MAX_OPS]])
                    for start in range(0, len(items), TXN_MAX_OPS)]

        async def op(conn):
            revision = 0
            for request in requests:
                revision = (await conn.unary(conn.kv.Txn, request)).header.revision
            return revision
        return self._call(what, op) if requests else 0

    def delete(self, key: bytes, what: str, range_end: bytes = b"") -> int:
        """Delete key (or [key, range_end)); how many keys went."""
        async def op(conn):
            response = await conn.unary(conn.kv.DeleteRange, pb.DeleteRangeRequest(key=key, range_end=range_end))
            return int(response.deleted)
        return self._call(what, op)

    # ---- leases ----

    def grant(self, ttl: int) -> int:
        async def op(conn):
            return (await conn.unary(conn.lease.LeaseGrant, pb.LeaseGrantRequest(TTL=ttl))).ID
        return self._call(f"grant a {ttl}s lease", op)

    def grant_many(self, ttl: int, count: int) -> list:
        """`count` new leases of ttl seconds (their ids), the requests in flight at once
        in windows of WINDOW (a benchmark's thousands of synthetic nodes)."""
        request = pb.LeaseGrantRequest(TTL=ttl)

        async def op(conn):
            answers = await _in_flight(conn, conn.lease.LeaseGrant, [request] * count)
            return [answer.ID for answer in answers]
        return self._call(f"grant {count} leases", op)

    def keepalive(self, lease_id: int) -> int:
        """Send one keepalive; the TTL etcd granted again, 0 when the lease is gone."""
        async def op(conn):
            call = conn.lease.LeaseKeepAlive(timeout=conn.timeout, metadata=conn.metadata)
            try:
                await call.write(pb.LeaseKeepAliveRequest(ID=lease_id))
                response = await call.read()
            finally:
                call.cancel()
            if response is aio.EOF:
                raise RegistryError(f"etcd at {conn.endpoint.url} ended the keepalive of lease {lease_id:x} "
                                    "without an answer")
            return max(int(response.TTL), 0)
        return self._call(f"keep lease {lease_id:x} alive", op)

    def time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left, -1 when it is gone."""
        async def op(conn):
            return int((await conn.unary(conn.lease.LeaseTimeToLive, pb.LeaseTimeToLiveRequest(ID=lease_id))).TTL)
        return self._call(f"read lease {lease_id:x}", op)

    def time_to_live_many(self, lease_ids) -> dict:
        """{lease id: seconds left, -1 when gone} for many leases in one round: the
        requests in flight at once on the one channel, in windows of WINDOW, instead of
        one round trip per lease."""
        ids = sorted({int(i) for i in lease_ids if i})
        if not ids:
            return {}

        async def op(conn):
            answers = await _in_flight(conn, conn.lease.LeaseTimeToLive,
                                       [pb.LeaseTimeToLiveRequest(ID=lease_id) for lease_id in ids])
            return {lease_id: int(answer.TTL) for lease_id, answer in zip(ids, answers)}
        return self._call(f"read {len(ids)} leases", op)

    def revoke(self, lease_id: int) -> None:
        """Revoke the lease (its keys vanish); a lease that is already gone is fine."""
        async def op(conn):
            await conn.unary(conn.lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=lease_id))
        try:
            self._call(f"revoke lease {lease_id:x}", op)
        except _LeaseNotFound:
            pass

    def revoke_quietly(self, lease_id: int) -> None:
        try:
            self.revoke(lease_id)
        except RegistryError as exc:
            log.warning("could not revoke unused lease %x (it expires by itself): %s", lease_id, exc)

    # ---- watches ----

    def watch_prefix(self, prefix: str, start_revision: int, on_event):
        """See EtcdRegistry.watch_leases; returns cancel()."""
        # A cheap read first: it renews an expired auth token (etcd cancels a watch created
        # with one: "invalid auth token") and reports a missing permission synchronously.
        self.count_prefix(prefix.encode(), f"watch {prefix}")
        loop = self._start_loop()
        watch = _PrefixWatch(self, loop, prefix, start_revision, on_event)
        with self._lock:
            if self._closed:
                raise RegistryError("the etcd registry is closed")
            self._watches.add(watch)
        try:
            self._call(f"watch {prefix}", watch.open)
        except BaseException:
            self._forget_watch(watch)
            raise
        return watch.cancel

    def _forget_watch(self, watch) -> None:
        with self._lock:
            self._watches.discard(watch)

    # ---- connection ----

    def connect(self) -> str:
        """Connect now (normally lazy); returns the URL of the endpoint in use."""
        return self._start_loop().run(self._guarded(self._connect)).endpoint.url

    def close(self) -> None:
        """Cancel every watch (no resync) and close the connection; later calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            watches, self._watches = list(self._watches), set()
            loop = self._loop
        for watch in watches:
            watch.cancel()
        if loop is None:
            return
        try:
            loop.run(self._close_channel(watches), CLOSE_TIMEOUT)
        except Exception as exc:  # the loop is stuck or gone: the process ends it anyway
            log.debug("closing the etcd channel: %s", exc)
        loop.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    async def _close_channel(self, watches) -> None:
        """Close the channel and let the cancelled watches' tasks finish (runs on the loop)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.channel.close()
        await asyncio.gather(*(w.task for w in watches if w.task is not None), return_exceptions=True)

    def _start_loop(self) -> _Loop:
        with self._lock:
            if self._closed:
                raise RegistryError("the etcd registry is closed")
            if self._loop is None:
                self._loop = _Loop()
            return self._loop

    def _call(self, what: str, op):
        """op(connection), a coroutine function, run on the loop with failover bookkeeping
        and one token renewal; RegistryError."""
        return self._start_loop().run(self._guarded(self._attempts, what, op))

    async def _guarded(self, function, *args):
        """function(*args) on the loop; a closed registry or channel becomes RegistryError."""
        try:
            return await function(*args)
        except aio.UsageError as exc:  # "Channel is closed": close() ran meanwhile
            if self._closed:
                raise RegistryError("the etcd registry is closed") from None
            raise RegistryError(f"etcd: the connection closed under a call: {exc}") from None

    async def _attempts(self, what: str, op):
        for attempt in range(2):
            conn = await self._connect()
            try:
                return await op(conn)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                known = etcd_errors.lookup(code.name, details)
                if known is not None and known.kind == etcd_errors.TOKEN_EXPIRED and attempt == 0 \
                        and self.username:
                    try:
                        await self._authenticate(conn)
                    except grpc.RpcError as renewal:
                        if etcd_errors.is_endpoint_failure(renewal.code().name):
                            await self._drop(conn)
                        raise self._error(renewal, conn.endpoint, "authenticate") from None
                    continue
                if known is not None and known.kind == etcd_errors.LEASE_GONE:
                    raise _LeaseNotFound(details) from None
                if etcd_errors.is_endpoint_failure(code.name) or \
                        (known is not None and known.kind == etcd_errors.MEMBER):
                    await self._drop(conn)
                raise self._error(exc, conn.endpoint, what) from None
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this call itself was cancelled
                # grpc cancels the calls of a channel that closes: another call found the
                # endpoint failing and dropped it (or close() ran).  Not retried here: the
                # request may have been applied (a transaction), and the caller decides.
                if self._closed:
                    raise RegistryError("the etcd registry is closed") from None
                raise RegistryError(f"etcd at {conn.endpoint.url}: the connection was closed while trying to "
                                    f"{what} (another call found the endpoint failing); the next call "
                                    "connects again") from None

    async def _connect(self) -> _Connection:
        if self._closed:
            raise RegistryError("the etcd registry is closed")
        if self._conn is not None:
            return self._conn
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is not None:   # another call connected while this one waited
                return self._conn
            failures = []
            for step in range(len(self.endpoints)):
                index = (self._next + step) % len(self.endpoints)
                try:
                    conn = await self._open(self.endpoints[index])
                except RegistryError as exc:
                    if getattr(exc, "final", False):
                        raise
                    failures.append(str(exc))
                    continue
                if self._closed:
                    await conn.channel.close()
                    raise RegistryError("the etcd registry is closed")
                self._conn, self._next = conn, index
                return conn
            if len(failures) == 1:
                raise RegistryError(failures[0])
            raise RegistryError("no etcd endpoint answered: " + "; ".join(failures))

    async def _open(self, endpoint: Endpoint) -> _Connection:
        """A connection that answered Status, or RegistryError (final=True for bad credentials)."""
        if endpoint.tls:
            channel = aio.secure_channel(endpoint.target, self._credentials(endpoint), options=GRPC_OPTIONS)
        else:
            channel = aio.insecure_channel(endpoint.target, options=GRPC_OPTIONS)
        conn = _Connection(endpoint, channel, self.timeout)
        step = "answer status"
        try:
            if self.username:
                step = "authenticate"
                await self._authenticate(conn)
                step = "answer status"
            await conn.unary(conn.maintenance.Status, pb.StatusRequest())
        except grpc.RpcError as exc:
            await channel.close()
            refused = exc.code() == grpc.StatusCode.UNAVAILABLE and endpoint.tls and await _port_open(endpoint)
            raise self._error(exc, endpoint, step, tls_refused=refused) from None
        return conn

    def _credentials(self, endpoint: Endpoint):
        """The TLS credentials for an https endpoint, read from the files now (so a
        certificate renewed on disk is used by the next connection)."""
        files = {"root_certificates": self.cafile or DEFAULT_CA_BUNDLE}
        if self.certfile:
            files.update(certificate_chain=self.certfile, private_key=self.keyfile)
        contents = {}
        for name, path in files.items():
            try:
                with open(path, "rb") as handle:
                    contents[name] = handle.read()
            except OSError as exc:
                raise RegistryError(f"cannot read the TLS file {path} for {endpoint.url}: "
                                    f"{exc.strerror}") from None
        return grpc.ssl_channel_credentials(**contents)

    async def _authenticate(self, conn: _Connection) -> None:
        """A fresh token for conn (RpcError when etcd refuses)."""
        response = await conn.auth.Authenticate(pb.AuthenticateRequest(name=self.username, password=self.password),
                                                timeout=conn.timeout)
        conn.token = response.token

    async def _drop(self, conn: _Connection) -> None:
        """Abandon a failing endpoint: the next call connects, starting with the next one."""
        if self._conn is conn:
            self._conn = None
            self._next = (self.endpoints.index(conn.endpoint) + 1) % len(self.endpoints)
        await conn.channel.close()

    def _error(self, exc: grpc.RpcError, endpoint: Endpoint, what: str, tls_refused: bool = False) -> RegistryError:
        """A RegistryError that names the endpoint and explains the gRPC failure: by its
        status code first, then by etcd's own message (etcd_errors)."""
        code, details = exc.code(), exc.details() or ""
        known = etcd_errors.lookup(code.name, details)
        user = self.username
        final = False
        if tls_refused:
            # the port takes TCP connections, yet gRPC could not set the channel up: the
            # TLS handshake (or HTTP/2 over it) failed
            ca = self.cafile or DEFAULT_CA_BUNDLE
            message = f"TLS handshake with {endpoint.url} failed: {details}"
            if not self.certfile:
                message += (" (no client certificate was given: if etcd requires one "
                            "(--client-cert-auth), pass --etcd-certfile and --etcd-keyfile;")
            else:
                message += f" (client certificate {self.certfile};"
            message += f" CA bundle {ca}: is it the CA that signed etcd's certificate?)"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            message = f"etcd at {endpoint.url} did not {what} within {self.timeout:g}s"
        elif code == grpc.StatusCode.UNAVAILABLE and known is None:
            message = f"etcd at {endpoint.url} is unreachable: {details}"
        elif known is not None and known.kind == etcd_errors.CREDENTIALS:
            final = True
            if known.message.endswith("invalid user ID or password"):
                message = f"etcd at {endpoint.url} rejected the credentials for user {user}: {details}"
            elif known.message.endswith("user name is empty"):
                message = f"etcd at {endpoint.url} requires a username and password: {details}"
            else:
                message = f"etcd at {endpoint.url} has authentication disabled, but user {user} was given: {details}"
        elif known is not None and known.kind == etcd_errors.PERMISSION:
            message = f"etcd at {endpoint.url} denied user {user or '(none)'} to {what}: {details}"
        elif known is not None and known.kind == etcd_errors.MEMBER:
            message = f"etcd at {endpoint.url} cannot {what} now: {details}"
        else:
            message = f"etcd at {endpoint.url} failed to {what}: {code.name}: {details}"
        if known is not None and known.fix:
            message += f" ({known.fix})"
        error = RegistryError(message)
        error.final = final
        return error


async def _in_flight(conn: _Connection, method, requests: list) -> list:
    """The answers to `requests` on one unary method, in order: WINDOW of them in flight
    at once on the one channel; the first failure cancels the rest and is raised."""
    answers = []
    for start in range(0, len(requests), WINDOW):
        calls = [conn.unary(method, request) for request in requests[start:start + WINDOW]]
        try:
            answers += await asyncio.gather(*calls)
        finally:
            for call in calls:
                call.cancel()  # a no-op on calls that ended
    return answers


async def _port_open(endpoint: Endpoint) -> bool:
    """Does the endpoint's port accept a TCP connection (within PROBE_TIMEOUT)?"""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(endpoint.host, endpoint.port), PROBE_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


class _LeaseNotFound(RegistryError):
    """etcd: requested lease not found (internal: mapped to False/ignored by the callers)."""


_STOP = object()  # tells a watch's thread to end without a word


class _PrefixWatch:
    """One watch stream: read by a task on the transport's loop, its events handed in
    order to a thread of its own that calls on_event; see EtcdRegistry.watch_leases."""

    def __init__(self, transport: EtcdTransport, loop: _Loop, prefix: str, start_revision: int, on_event):
        self.transport = transport
        self.loop = loop
        self.prefix = prefix
        self.start_revision = max(int(start_revision), 0)
        self.on_event = on_event
        self.stopping = threading.Event()    # set by cancel(): end silently
        self.events = queue.SimpleQueue()    # (kind, ...) items from the loop, _STOP last
        self.call = None
        self.task = None
        self.thread = threading.Thread(target=self._deliver, daemon=True, name=f"weft-watch {prefix}")

    async def open(self, conn: _Connection) -> None:
        """Start the stream on conn (runs on the loop)."""
        self.call = conn.watch.Watch(metadata=conn.metadata)
        self.task = asyncio.ensure_future(self._read(conn.endpoint, self.call))
        self.thread.start()

    def cancel(self) -> None:
        """Stop without a resync and wait for the watch's thread; idempotent, any thread."""
        self.stopping.set()
        self.loop.soon(self._stop_stream)
        self.events.put(_STOP)
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(WATCH_JOIN_TIMEOUT)

    def _stop_stream(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self.task is not None:
            self.task.cancel()

    async def _read(self, endpoint: Endpoint, call) -> None:
        key = self.prefix.encode()
        resync_revision = 0
        try:
            await call.write(pb.WatchRequest(create_request=pb.WatchCreateRequest(
                key=key, range_end=prefix_end(key), start_revision=self.start_revision)))
            while not self.stopping.is_set():
                response = await call.read()
                if response is aio.EOF:
                    log.warning("etcd at %s ended the watch on %s", endpoint.url, self.prefix)
                    break
                if response.compact_revision:  # we fell behind a compaction: re-list
                    resync_revision = response.compact_revision
                    log.warning("watch on %s fell behind etcd's compaction at revision %d; "
                                "relisting", self.prefix, response.compact_revision)
                    break
                if response.canceled:
                    log.warning("etcd cancelled the watch on %s: %s", self.prefix,
                                response.cancel_reason or "no reason given")
                    break
                if response.events:
                    self.events.put(("events", response.events))
        except asyncio.CancelledError:
            pass  # cancel(): _STOP is queued already
        except grpc.RpcError as exc:
            if not self.stopping.is_set():
                log.warning("watch on %s at %s broke: %s: %s", self.prefix, endpoint.url,
                            exc.code().name, exc.details())
        except aio.UsageError as exc:  # the channel closed before the stream began
            if not self.stopping.is_set():
                log.warning("watch on %s at %s could not start: %s", self.prefix, endpoint.url, exc)
        finally:
            call.cancel()
            self.transport._forget_watch(self)
            self.events.put(_STOP if self.stopping.is_set() else ("resync", resync_revision))

    def _deliver(self) -> None:
        """The watch's thread: on_event for each event, in order, until the stream ends."""
        while True:
            item = self.events.get()
            if item is _STOP or self.stopping.is_set():
                return
            if item[0] == "resync":
                self._notify("resync", None, None, item[1], 0)
                return
            for event in item[1]:
                if self.stopping.is_set():
                    return
                kv = event.kv
                suffix = kv.key.decode()[len(self.prefix):]
                if event.type == pb.Event.DELETE:
                    self._notify("delete", suffix, "", kv.mod_revision, 0)
                else:
                    self._notify("put", suffix, kv.value.decode(errors="replace"), kv.mod_revision,
                                 kv.create_revision)

    def _notify(self, *args) -> None:
        try:
            self.on_event(*args)
        except Exception:  # a faulty handler must not kill the watch
            log.exception("lease watch handler failed on %s", args[:2])
