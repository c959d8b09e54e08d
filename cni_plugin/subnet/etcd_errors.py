"""etcd's failures as its server publishes them: a gRPC status code and a fixed message.

etcd answers each failure it knows with a gRPC status whose message is one of a fixed set
of strings, each always sent with the same code (etcd's api/v3rpc/rpctypes; its own Go
client turns a status back into an error with one string-keyed table).  weft judges a
failed call the same way, and only this way:

1. the gRPC status code first: UNAVAILABLE, DEADLINE_EXCEEDED and the transport's own
   codes (see ENDPOINT_CODES) mean this endpoint cannot serve us now, whatever the message;
2. then, for what the code alone does not tell apart (INVALID_ARGUMENT is sent both for a
   wrong password and for a missing user name), the exact message is looked up in
   ERRORS below, and accepted only when it came with the code etcd sends it with.

No other code matches on the text of a message.  Pure data, no gRPC import: codes are
named as grpc.StatusCode names them.
"""

from dataclasses import dataclass

# What a failure means for the caller (EtcdError.kind):
LEASE_GONE = "lease-gone"          # the lease asked about does not exist (any more)
TOKEN_EXPIRED = "token-expired"    # authenticate again, then retry once
CREDENTIALS = "credentials"        # the user/password is wrong or missing: the same at every member
PERMISSION = "permission"          # the user may not touch that key
MEMBER = "member"                  # this member cannot serve now (no leader, stopping, ...): try another
REQUEST = "request"                # the request itself was refused; retrying it does not help

# codes after which the endpoint is abandoned and the next call tries the next one
ENDPOINT_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN", "INTERNAL", "CANCELLED"})


@dataclass(frozen=True)
class EtcdError:
    code: str       # the gRPC status code etcd sends it with (grpc.StatusCode member name)
    message: str    # etcd's exact status message
    kind: str
    fix: str = ""   # what an operator can do about it, for the error weft reports


ERRORS = {error.message: error for error in (
    EtcdError("NOT_FOUND", "etcdserver: requested lease not found", LEASE_GONE),
    EtcdError("UNAUTHENTICATED", "etcdserver: invalid auth token", TOKEN_EXPIRED),
    EtcdError("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password",
              CREDENTIALS, "check --etcd-username and the password in $WEFTD_ETCD_PASSWORD"),
    EtcdError("INVALID_ARGUMENT", "etcdserver: user name is empty", CREDENTIALS,
              "etcd has authentication enabled: give --etcd-username and $WEFTD_ETCD_PASSWORD"),
    EtcdError("FAILED_PRECONDITION", "etcdserver: authentication is not enabled", CREDENTIALS,
              "drop --etcd-username, or enable authentication in etcd"),
    EtcdError("PERMISSION_DENIED", "etcdserver: permission denied", PERMISSION,
              "grant the user a role with readwrite permission on the key prefix (--etcd-prefix)"),
    EtcdError("UNAVAILABLE", "etcdserver: no leader", MEMBER),
    EtcdError("UNAVAILABLE", "etcdserver: leader changed", MEMBER),
    EtcdError("UNAVAILABLE", "etcdserver: not capable", MEMBER),
    EtcdError("UNAVAILABLE", "etcdserver: server stopped", MEMBER),
    EtcdError("UNAVAILABLE", "etcdserver: request timed out", MEMBER),
    EtcdError("UNAVAILABLE", "etcdserver: request timed out, possibly due to previous leader failure", MEMBER),
    EtcdError("UNAVAILABLE", "etcdserver: request timed out, possibly due to connection lost", MEMBER),
    EtcdError("UNAVAILABLE", "etcdserver: unhealthy cluster", MEMBER),
    EtcdError("UNAVAILABLE", "etcdserver: rpc not supported for learner", MEMBER,
              "list voting members in --etcd-endpoints, not learners"),
    EtcdError("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted", REQUEST),
    EtcdError("OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision", REQUEST),
    EtcdError("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded", REQUEST,
              "etcd is out of space: compact and defragment it (or raise its --quota-backend-bytes), "
              "then disarm its NOSPACE alarm"),
    EtcdError("RESOURCE_EXHAUSTED", "etcdserver: too many requests", MEMBER),
    EtcdError("INVALID_ARGUMENT", "etcdserver: too many operations in txn request", REQUEST,
              "etcd's --max-txn-ops is below 128, weft's largest transaction; raise it"),
    EtcdError("INVALID_ARGUMENT", "etcdserver: request is too large", REQUEST,
              "raise etcd's --max-request-bytes"),
    EtcdError("OUT_OF_RANGE", "etcdserver: too large lease TTL", REQUEST, "lower weftd's --lease-ttl"),
    EtcdError("DATA_LOSS", "etcdserver: corrupt cluster", MEMBER),
)}


def lookup(code: str, message: str):
    """The EtcdError etcd meant with this status (code name, message), or None when the
    pair is not one of etcd's (a message sent with another code does not count)."""
    error = ERRORS.get(message)
    return error if error is not None and error.code == code else None


def is_endpoint_failure(code: str) -> bool:
    """The code says this endpoint cannot serve us now (fail over), whatever the message."""
    return code in ENDPOINT_CODES
