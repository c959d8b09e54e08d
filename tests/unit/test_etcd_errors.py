"""etcd's failures are judged by gRPC status code first, then by etcd's own message table
(etcd_errors), never by other text: the table itself, then the transport against small
in-process gRPC servers built from the same generated stubs that answer as etcd would."""

import threading
import time
from concurrent import futures

import grpc
import pytest

from cni_plugin.subnet import etcd_errors
from cni_plugin.subnet.etcd_api import etcd_pb2 as pb
from cni_plugin.subnet.etcd_api import etcd_pb2_grpc as rpc
from cni_plugin.subnet.etcd_transport import EtcdTransport
from cni_plugin.subnet.registry import RegistryError


# ---- the table ----

def test_every_entry_names_a_real_grpc_code_and_an_etcd_message():
    codes = {code.name for code in grpc.StatusCode}
    for message, error in etcd_errors.ERRORS.items():
        assert error.message == message and message.startswith("etcdserver: ")
        assert error.code in codes, error
    assert etcd_errors.ENDPOINT_CODES <= codes


@pytest.mark.parametrize("code,message,kind", [
    ("NOT_FOUND", "etcdserver: requested lease not found", etcd_errors.LEASE_GONE),
    ("UNAUTHENTICATED", "etcdserver: invalid auth token", etcd_errors.TOKEN_EXPIRED),
    ("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password", etcd_errors.CREDENTIALS),
    ("INVALID_ARGUMENT", "etcdserver: user name is empty", etcd_errors.CREDENTIALS),
    ("FAILED_PRECONDITION", "etcdserver: authentication is not enabled", etcd_errors.CREDENTIALS),
    ("PERMISSION_DENIED", "etcdserver: permission denied", etcd_errors.PERMISSION),
    ("UNAVAILABLE", "etcdserver: no leader", etcd_errors.MEMBER),
    ("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded", etcd_errors.REQUEST),
])
def test_etcds_pairs_are_found(code, message, kind):
    assert etcd_errors.lookup(code, message).kind == kind


@pytest.mark.parametrize("code,message", [
    ("UNKNOWN", "etcdserver: requested lease not found"),   # right words, wrong code
    ("NOT_FOUND", "requested lease not found"),             # a part of the message
    ("NOT_FOUND", "etcdserver: requested lease not found (extra)"),
    ("UNAVAILABLE", "failed to connect to all addresses"),  # gRPC's own words
])
def test_anything_else_is_not_etcds(code, message):
    assert etcd_errors.lookup(code, message) is None


def test_the_code_alone_decides_failover():
    assert etcd_errors.is_endpoint_failure("UNAVAILABLE") and etcd_errors.is_endpoint_failure("DEADLINE_EXCEEDED")
    assert not etcd_errors.is_endpoint_failure("NOT_FOUND") and not etcd_errors.is_endpoint_failure("PERMISSION_DENIED")


# ---- the transport against fake members ----

class FakeMember(rpc.KVServicer, rpc.LeaseServicer, rpc.AuthServicer, rpc.MaintenanceServicer):
    """Answers Status; Range, LeaseRevoke and Authenticate fail with the (code, message)
    queued for them (then succeed); counts the calls."""

    def __init__(self):
        self.failures = {"Range": [], "LeaseRevoke": [], "Authenticate": []}
        self.calls = {"Range": 0, "LeaseRevoke": 0, "Authenticate": 0, "Status": 0}
        self.tokens = []   # the token metadata each Range carried
        self.slow_count = threading.Event()  # set: a count (count_only Range) waits ~2 s
        self.counting = threading.Event()    # set while such a slow count is in etcd's hands

    def _answer(self, method, context):
        self.calls[method] += 1
        if self.failures[method]:
            code, message = self.failures[method].pop(0)
            context.abort(getattr(grpc.StatusCode, code), message)

    def Status(self, request, context):
        self.calls["Status"] += 1
        return pb.StatusResponse(version="3.4.99")

    def Range(self, request, context):
        self.tokens.append(dict(context.invocation_metadata()).get("token"))
        if request.count_only and self.slow_count.is_set():
            self.counting.set()
            time.sleep(2.0)
        self._answer("Range", context)
        return pb.RangeResponse(header=pb.ResponseHeader(revision=7), count=3)

    def LeaseRevoke(self, request, context):
        self._answer("LeaseRevoke", context)
        return pb.LeaseRevokeResponse()

    def Authenticate(self, request, context):
        self._answer("Authenticate", context)
        return pb.AuthenticateResponse(token=f"token-{self.calls['Authenticate']}")


@pytest.fixture
def members():
    """Two fake members on localhost ports: [(FakeMember, endpoint URL)]."""
    running = []
    for _ in range(2):
        member = FakeMember()
        server = grpc.server(futures.ThreadPoolExecutor(4))
        for add in (rpc.add_KVServicer_to_server, rpc.add_LeaseServicer_to_server,
                    rpc.add_AuthServicer_to_server, rpc.add_MaintenanceServicer_to_server):
            add(member, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        running.append((member, f"http://127.0.0.1:{port}", server))
    yield [(member, url) for member, url, _ in running]
    for _, _, server in running:
        server.stop(None)


def test_a_gone_lease_is_quiet_only_when_etcd_says_so(members):
    (member, url), _ = members
    with EtcdTransport([url], timeout=5.0) as etcd:
        member.failures["LeaseRevoke"].append(("NOT_FOUND", "etcdserver: requested lease not found"))
        etcd.revoke(0x42)  # already gone: fine
        member.failures["LeaseRevoke"].append(("UNKNOWN", "etcdserver: requested lease not found"))
        with pytest.raises(RegistryError, match=f"etcd at {url} failed to revoke lease 42: UNKNOWN"):
            etcd.revoke(0x42)


def test_an_expired_token_is_renewed_once_and_the_call_retried(members):
    (member, url), _ = members
    with EtcdTransport([url], username="weft", password="pw", timeout=5.0) as etcd:
        assert etcd.count_prefix(b"/weft/", "count") == 3
        member.failures["Range"].append(("UNAUTHENTICATED", "etcdserver: invalid auth token"))
        assert etcd.count_prefix(b"/weft/", "count") == 3
        assert member.calls["Authenticate"] == 2
        assert member.tokens == ["token-1", "token-1", "token-2"]
        # twice in a row: renewed once, then reported
        member.failures["Range"] += [("UNAUTHENTICATED", "etcdserver: invalid auth token")] * 2
        with pytest.raises(RegistryError, match="failed to count: UNAUTHENTICATED"):
            etcd.count_prefix(b"/weft/", "count")


def test_a_refused_renewal_is_reported_as_such(members):
    (member, url), _ = members
    with EtcdTransport([url], username="weft", password="pw", timeout=5.0) as etcd:
        etcd.connect()
        member.failures["Range"].append(("UNAUTHENTICATED", "etcdserver: invalid auth token"))
        member.failures["Authenticate"].append(
            ("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password"))
        with pytest.raises(RegistryError, match=f"etcd at {url} rejected the credentials for user weft"):
            etcd.count_prefix(b"/weft/", "count")


def test_wrong_credentials_are_final_not_tried_elsewhere(members):
    (first, url), (second, other) = members
    first.failures["Authenticate"].append(
        ("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password"))
    with EtcdTransport([url, other], username="weft", password="wrong", timeout=5.0) as etcd:
        with pytest.raises(RegistryError, match=f"etcd at {url} rejected the credentials for user weft.*"
                                                "WEFTD_ETCD_PASSWORD"):
            etcd.count_prefix(b"/weft/", "count")
    assert second.calls["Authenticate"] == 0


def test_a_member_without_leader_is_left_for_the_next(members):
    (first, url), (second, other) = members
    with EtcdTransport([url, other], timeout=5.0) as etcd:
        assert etcd.connect() == url
        first.failures["Range"].append(("UNAVAILABLE", "etcdserver: no leader"))
        with pytest.raises(RegistryError, match=f"etcd at {url} cannot count now: etcdserver: no leader"):
            etcd.count_prefix(b"/weft/", "count")
        assert etcd.count_prefix(b"/weft/", "count") == 3
        assert etcd.connect() == other and second.calls["Range"] == 1


def test_a_call_on_a_channel_dropped_under_it_fails_as_a_registry_error(members):
    """One call finds the member without leader and drops the channel while another
    call waits on it: that one fails with a RegistryError too (grpc cancels it), not
    with a bare cancellation, and the next call goes to the next member."""
    (first, url), (second, other) = members
    with EtcdTransport([url, other], timeout=5.0) as etcd:
        assert etcd.connect() == url
        first.slow_count.set()
        outcome = []

        def slow():
            try:
                outcome.append(etcd.count_prefix(b"/weft/", "count"))
            except Exception as exc:  # noqa: BLE001 - the test looks at its type
                outcome.append(exc)

        waiting = threading.Thread(target=slow)
        waiting.start()
        assert first.counting.wait(5)
        first.failures["LeaseRevoke"].append(("UNAVAILABLE", "etcdserver: no leader"))
        with pytest.raises(RegistryError, match="no leader"):
            etcd.revoke(0x42)
        waiting.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], RegistryError), outcome
        assert "connection was closed while trying to count" in str(outcome[0])
        assert etcd.count_prefix(b"/weft/", "count") == 3 and etcd.connect() == other


def test_a_refused_request_keeps_the_endpoint_and_says_what_to_do(members):
    (member, url), _ = members
    with EtcdTransport([url], timeout=5.0) as etcd:
        member.failures["Range"].append(("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded"))
        with pytest.raises(RegistryError, match="failed to count: RESOURCE_EXHAUSTED.*compact and defragment"):
            etcd.count_prefix(b"/weft/", "count")
        member.failures["Range"].append(("PERMISSION_DENIED", "etcdserver: permission denied"))
        with pytest.raises(RegistryError, match=r"denied user \(none\) to count.*readwrite"):
            etcd.count_prefix(b"/weft/", "count")
        assert etcd.count_prefix(b"/weft/", "count") == 3
    assert member.calls["Status"] == 1, "a refused request dropped the connection"
