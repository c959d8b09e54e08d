"""Registry against a real etcd: configs, exclusive leases, watches, TLS, auth, history.

The transport waits for gRPC on its asyncio loop, so every watch ending, cancel and
outage below must reach its watch through gRPC's own notification (nothing polls)."""

import json
import os
import secrets
import subprocess
import sys
import threading
import time

import pytest

from cni_plugin.subnet import etcd_transport
from cni_plugin.subnet.etcd_registry import EtcdRegistry
from cni_plugin.subnet.registry import RegistryError
from lab.etcd import EtcdServer, free_port

WAIT = 10.0


def wait_for(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def etcd_leases(server) -> set:
    """Lease ids (ints) that `etcdctl lease list` shows."""
    out = server.etcdctl("lease", "list", check=True).stdout.split("\n")[1:]
    return {int(line, 16) for line in out if line.strip()}


def watch_threads() -> list:
    return [t for t in threading.enumerate() if t.name.startswith("weft-watch")]


class Recorder:
    """Collects watch events from the watch thread."""

    def __init__(self):
        self.events = []
        self.created = []  # each event's create revision (0 on delete and resync)
        self.lock = threading.Lock()

    def __call__(self, kind, key, value, revision, created):
        with self.lock:
            self.events.append((kind, key, value, revision))
            self.created.append(created)

    def snapshot(self) -> list:
        with self.lock:
            return list(self.events)

    def wait(self, count: int) -> list:
        return wait_for(lambda: len(self.snapshot()) >= count and self.snapshot(), f"{count} watch events")


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory):
    """One etcd for the tests that neither stop it nor need TLS/auth (each uses its own network)."""
    server = EtcdServer(tmp_path_factory.mktemp("shared") / "etcd")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def registry(shared_etcd):
    reg = EtcdRegistry([shared_etcd.endpoint], timeout=5.0)
    yield reg
    reg.close()


@pytest.fixture
def net():
    return "net-" + secrets.token_hex(3)


# ---- configs ----

def test_network_config_roundtrip_and_names(registry, shared_etcd, net):
    assert registry.get_network_config(net) is None
    registry.put_network_config(net, '{"Network": "10.244.0.0/16"}')
    registry.put_network_config(net, '{"Network": "10.245.0.0/16"}')
    assert registry.get_network_config(net) == '{"Network": "10.245.0.0/16"}'
    shared_etcd.etcdctl("put", f"/weft/networks/{net}-noconfig/subnets/10.1.1.0-24", "{}", check=True)
    names = registry.network_names()
    assert net in names and f"{net}-noconfig" not in names
    assert shared_etcd.etcdctl("get", f"/weft/networks/{net}/config", "--print-value-only").stdout.strip() \
        == '{"Network": "10.245.0.0/16"}'


def test_prefix_is_honoured(shared_etcd, net):
    with EtcdRegistry([shared_etcd.endpoint], prefix="/other/") as reg:
        assert reg.config_key(net) == f"/other/networks/{net}/config"
        reg.put_network_config(net, "{}")
    assert shared_etcd.etcdctl("get", f"/other/networks/{net}/config", "--print-value-only").stdout.strip() == "{}"


# ---- leases ----

def rows3(registry, net) -> list:
    """The leases as (key, value, etcd lease id), without the create revision."""
    return [row[:3] for row in registry.list_leases(net)[0]]


def test_rows_and_watch_events_carry_the_create_revision(registry, net):
    """Oldest-wins validation needs every key's create revision, the same from a listing
    and from the watch, and unchanged by later updates."""
    _, start = registry.list_leases(net)
    events = Recorder()
    cancel = registry.watch_leases(net, start + 1, events)
    try:
        first = registry.create_lease(net, "10.244.1.0-24", "a", ttl=60)
        registry.create_lease(net, "10.244.2.0-24", "b", ttl=60)
        registry.update_lease(net, "10.244.1.0-24", "a2", first)
        events.wait(3)
    finally:
        cancel()
    rows = {row.key: row for row in registry.list_leases(net)[0]}
    assert rows["10.244.1.0-24"].create_revision < rows["10.244.2.0-24"].create_revision
    put_revisions = [e[3] for e in events.snapshot()]
    assert events.created == [put_revisions[0], put_revisions[1], put_revisions[0]], \
        "the update of 10.244.1.0-24 must keep its create revision"
    assert events.created[0] == rows["10.244.1.0-24"].create_revision


def test_create_lease_with_listed_at_fails_when_any_lease_key_changed(registry, shared_etcd, net):
    """The acquisition guard: a subnet chosen from a listing is only created if no lease
    key was created or rewritten since (here an overlapping /23 written by hand)."""
    registry.create_lease(net, "10.244.1.0-24", "a", ttl=60)
    _, listed_at = registry.list_leases(net)
    assert registry.create_lease(net, "10.244.9.0-24", "x", ttl=60, listed_at=listed_at) is not None
    _, listed_at = registry.list_leases(net)
    shared_etcd.etcdctl("put", f"/weft/networks/{net}/subnets/10.244.4.0-23", "hostile", check=True)
    before = etcd_leases(shared_etcd)
    assert registry.create_lease(net, "10.244.5.0-24", "late", ttl=60, listed_at=listed_at) is None
    assert "10.244.5.0-24" not in [row.key for row in registry.list_leases(net)[0]]
    assert etcd_leases(shared_etcd) - before == set(), "the refused create leaked its etcd lease"
    _, listed_at = registry.list_leases(net)
    assert registry.create_lease(net, "10.244.6.0-24", "now", ttl=60, listed_at=listed_at) is not None

def test_create_lease_is_exclusive_and_leaks_no_etcd_lease(registry, shared_etcd, net):
    before = etcd_leases(shared_etcd)
    lease_id = registry.create_lease(net, "10.244.3.0-24", '{"NodeName": "a"}', ttl=60)
    assert lease_id
    assert registry.create_lease(net, "10.244.3.0-24", '{"NodeName": "b"}', ttl=60) is None
    assert etcd_leases(shared_etcd) - before == {lease_id}
    leases, revision = registry.list_leases(net)
    assert [row[:3] for row in leases] == [("10.244.3.0-24", '{"NodeName": "a"}', lease_id)]
    assert revision > 0


def test_update_lease_only_with_the_bound_lease_id(registry, net):
    lease_id = registry.create_lease(net, "10.244.4.0-24", "v1", ttl=60)
    assert registry.update_lease(net, "10.244.4.0-24", "other", lease_id + 1) is False
    assert rows3(registry, net) == [("10.244.4.0-24", "v1", lease_id)]
    assert registry.update_lease(net, "10.244.4.0-24", "v2", lease_id) is True
    assert rows3(registry, net) == [("10.244.4.0-24", "v2", lease_id)]
    assert registry.update_lease(net, "10.244.5.0-24", "v2", lease_id) is False
    assert rows3(registry, net) == [("10.244.4.0-24", "v2", lease_id)]


def test_reservation_is_listed_with_lease_zero_and_never_taken(registry, shared_etcd, net):
    shared_etcd.etcdctl("put", f"/weft/networks/{net}/subnets/10.244.9.0-24", '{"NodeName": "r"}', check=True)
    assert rows3(registry, net) == [("10.244.9.0-24", '{"NodeName": "r"}', 0)]
    assert registry.create_lease(net, "10.244.9.0-24", "mine", ttl=60) is None
    assert registry.update_lease(net, "10.244.9.0-24", "mine", 12345) is False
    assert rows3(registry, net) == [("10.244.9.0-24", '{"NodeName": "r"}', 0)]


def test_refresh_extends_the_ttl_and_reports_a_gone_lease(registry):
    lease_id = registry.create_lease("refresh-" + secrets.token_hex(3), "10.244.1.0-24", "v", ttl=10)
    wait_for(lambda: registry.lease_ttl(lease_id) <= 8, "the ttl to drop", timeout=5)
    assert registry.refresh(lease_id) == 10
    assert registry.lease_ttl(lease_id) >= 9
    registry.revoke(lease_id)
    assert registry.refresh(lease_id) == 0
    assert registry.lease_ttl(lease_id) == -1


def test_lease_ttls_reads_many_leases_in_one_round(registry, net):
    ids = {ttl: registry.create_lease(net, f"10.244.{ttl}.0-24", "v", ttl=ttl) for ttl in (100, 200, 300)}
    gone = registry.create_lease(net, "10.244.99.0-24", "v", ttl=60)
    registry.revoke(gone)
    ttls = registry.lease_ttls([*ids.values(), gone, ids[100], 0])  # duplicates and 0 ignored
    assert sorted(ttls) == sorted([*ids.values(), gone])
    for ttl, lease_id in ids.items():
        assert ttl - 5 <= ttls[lease_id] <= ttl, (ttl, ttls)
    assert ttls[gone] == -1
    assert registry.lease_ttls([]) == {}


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _node_lease(index: int) -> str:
    return json.dumps({"PublicIP": f"192.168.7.{index + 1}", "NodeName": f"node-{index}", "BackendType": "vxlan",
                       "BackendData": {"VNI": 1, "VtepMAC": f"0e:00:00:00:07:{index:02x}"}})


def _many_leases(reg, net, count=70) -> dict:
    """{lease id: granted TTL} of `count` node leases with distinct TTLs (one revoked: -1)."""
    granted = {reg.create_lease(net, f"10.245.{i}.0-24", _node_lease(i), ttl=600 + 7 * i): 600 + 7 * i
               for i in range(count)}
    gone = next(iter(granted))
    reg.revoke(gone)
    granted[gone] = -1
    return granted


def _round_reads_every_ttl(reg, granted: dict) -> None:
    """One lease_ttls round answers every lease with its own TTL (-1 for the revoked one),
    each as a single LeaseTimeToLive reads it."""
    ttls = reg.lease_ttls(sorted(granted))
    assert sorted(ttls) == sorted(granted)
    for lease_id, ttl in granted.items():
        if ttl == -1:
            assert ttls[lease_id] == -1
        else:
            assert ttl - 10 <= ttls[lease_id] <= ttl
            assert abs(ttls[lease_id] - reg.lease_ttl(lease_id)) <= 2


def _weftctl_shows_every_ttl(net: str, granted: dict, flags=(), password=None) -> None:
    """`weftctl leases NET --ttl --json` with these etcd flags: a row per live lease (the
    revoked one's key went with it), each with the TTL etcd holds; without --ttl, none.
    Rows that are no node lease (a test's value "v") are left aside."""
    env = {**os.environ, "WEFTD_ETCD_PASSWORD": password} if password else dict(os.environ)
    command = [sys.executable, "-m", "cni_plugin.cli.weftctl", "leases", net, "--json", *flags]
    for extra in (["--ttl"], []):
        out = subprocess.run(command + extra, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        rows = [row for row in json.loads(out.stdout) if "error" not in row]
        assert sorted(row["leaseID"] for row in rows) == sorted(i for i, ttl in granted.items() if ttl != -1)
        for row in rows:
            if extra:
                assert granted[row["leaseID"]] - 10 <= row["ttl"] <= granted[row["leaseID"]], row
            else:
                assert "ttl" not in row, row


def test_a_ttl_round_reads_every_lease(registry, shared_etcd, net):
    granted = _many_leases(registry, net)
    _round_reads_every_ttl(registry, granted)
    _weftctl_shows_every_ttl(net, granted, ["--etcd-endpoints", shared_etcd.endpoint])


def test_a_round_larger_than_its_window_keeps_every_answer_in_place(registry):
    """More leases than requests in flight at once: the answers still land on their ids."""
    ids = registry.etcd.grant_many(600, etcd_transport.WINDOW + 7)
    assert len(set(ids)) == etcd_transport.WINDOW + 7
    gone = ids[etcd_transport.WINDOW + 3]
    registry.revoke(gone)
    try:
        ttls = registry.lease_ttls(ids)
        assert sorted(ttls) == sorted(ids)
        assert ttls[gone] == -1 and all(590 <= ttls[i] <= 600 for i in ids if i != gone)
    finally:
        for lease_id in ids:
            registry.etcd.revoke_quietly(lease_id)


def test_revoke_removes_the_key_and_is_idempotent(registry, shared_etcd, net):
    lease_id = registry.create_lease(net, "10.244.6.0-24", "v", ttl=60)
    registry.revoke(lease_id)
    assert registry.list_leases(net)[0] == []
    assert lease_id not in etcd_leases(shared_etcd)
    registry.revoke(lease_id)


def test_delete_lease_key(registry, net):
    lease_id = registry.create_lease(net, "10.244.7.0-24", "v", ttl=60)
    registry.delete_lease_key(net, "10.244.7.0-24")
    registry.delete_lease_key(net, "10.244.7.0-24")
    assert registry.list_leases(net)[0] == []
    assert registry.create_lease(net, "10.244.7.0-24", "again", ttl=60) not in (None, lease_id)


def test_lease_expires_after_its_ttl(registry, net):
    lease_id = registry.create_lease(net, "10.244.8.0-24", "v", ttl=2)
    assert rows3(registry, net) == [("10.244.8.0-24", "v", lease_id)]
    assert 0 < registry.lease_ttl(lease_id) <= 2, "etcd does not hold the lease with the TTL asked for"
    wait_for(lambda: registry.list_leases(net)[0] == [], "the lease to expire", timeout=10)
    assert registry.lease_ttl(lease_id) == -1


def test_invalid_arguments_are_refused(registry, net):
    with pytest.raises(ValueError):
        registry.create_lease(net, "10.244.1.0-24", "v", ttl=0)
    with pytest.raises(ValueError):
        registry.create_lease(net, "a/b", "v", ttl=5)
    with pytest.raises(ValueError):
        registry.get_network_config("a/b")
    with pytest.raises(ValueError):
        registry.update_lease(net, "10.244.1.0-24", "v", 0)


# ---- watches ----

def test_watch_delivers_puts_and_deletes_in_order(registry, net):
    registry.create_lease(net, "10.244.1.0-24", "before", ttl=60)
    _, revision = registry.list_leases(net)
    events = Recorder()
    cancel = registry.watch_leases(net, revision + 1, events)
    lease_id = registry.create_lease(net, "10.244.2.0-24", "a", ttl=60)
    registry.update_lease(net, "10.244.2.0-24", "b", lease_id)
    registry.delete_lease_key(net, "10.244.2.0-24")
    got = events.wait(3)
    assert [e[:3] for e in got] == [("put", "10.244.2.0-24", "a"), ("put", "10.244.2.0-24", "b"),
                                     ("delete", "10.244.2.0-24", "")]
    revisions = [e[3] for e in got]
    assert revisions == sorted(revisions) and len(set(revisions)) == 3 and revisions[0] > revision
    cancel()
    cancel()
    assert watch_threads() == []
    # a second watch sees the next change; the cancelled one must not
    control = Recorder()
    stop_control = registry.watch_leases(net, revisions[-1] + 1, control)
    try:
        registry.create_lease(net, "10.244.3.0-24", "after cancel", ttl=60)
        assert control.wait(1)[0][:3] == ("put", "10.244.3.0-24", "after cancel")
    finally:
        stop_control()
    assert len(events.snapshot()) == 3, "a cancelled watch still delivered events"


def test_watch_reports_lease_expiry_as_delete(registry, net):
    _, revision = registry.list_leases(net)
    events = Recorder()
    cancel = registry.watch_leases(net, revision + 1, events)
    try:
        registry.create_lease(net, "10.244.5.0-24", "short", ttl=2)
        got = wait_for(lambda: len(events.snapshot()) >= 2 and events.snapshot(), "the expiry event")
        assert [e[:2] for e in got] == [("put", "10.244.5.0-24"), ("delete", "10.244.5.0-24")]
    finally:
        cancel()


def test_watch_from_a_compacted_revision_resyncs_once(registry, shared_etcd, net):
    _, old_revision = registry.list_leases(net)
    for index in range(3):
        registry.put_network_config(net, json.dumps({"n": index}))
    _, current = registry.list_leases(net)
    shared_etcd.etcdctl("compact", str(current), check=True)
    events = Recorder()
    registry.watch_leases(net, old_revision + 1, events)
    assert events.wait(1) == [("resync", None, None, current)]
    wait_for(lambda: watch_threads() == [], "the watch thread to end", timeout=5)
    control = Recorder()
    stop_control = registry.watch_leases(net, current + 1, control)
    try:
        registry.create_lease(net, "10.244.1.0-24", "v", ttl=60)
        assert control.wait(1)[0][:2] == ("put", "10.244.1.0-24")
    finally:
        stop_control()
    assert events.snapshot() == [("resync", None, None, current)], "the resynced watch kept delivering"


def test_close_cancels_watches_without_resync(shared_etcd, net):
    reg = EtcdRegistry([shared_etcd.endpoint])
    events = Recorder()
    reg.watch_leases(net, 0, events)
    reg.close()
    assert watch_threads() == []
    assert events.snapshot() == []
    with pytest.raises(RegistryError, match="closed"):
        reg.list_leases(net)


def test_handler_errors_do_not_end_the_watch(registry, net):
    seen = []

    def flaky(kind, key, value, revision, created):
        seen.append(key)
        if len(seen) == 1:
            raise RuntimeError("handler bug")

    cancel = registry.watch_leases(net, 0, flaky)
    try:
        registry.create_lease(net, "10.244.1.0-24", "v", ttl=60)
        registry.create_lease(net, "10.244.2.0-24", "v", ttl=60)
        wait_for(lambda: len(seen) >= 2, "the second event")
    finally:
        cancel()


def test_stopping_etcd_resyncs_the_watch_and_calls_fail_until_it_returns(etcd):
    reg = EtcdRegistry([etcd.endpoint], timeout=3.0)
    try:
        events = Recorder()
        _, revision = reg.list_leases("weft")
        threads_before = threading.active_count()  # the transport's loop thread included
        reg.watch_leases("weft", revision + 1, events)
        etcd.stop()
        assert events.wait(1) == [("resync", None, None, 0)]
        wait_for(lambda: watch_threads() == [], "the watch thread to end", timeout=5)
        with pytest.raises(RegistryError) as failure:
            reg.list_leases("weft")
        assert etcd.endpoint in str(failure.value) and "unreachable" in str(failure.value)
        assert len(events.snapshot()) == 1  # its thread has ended: nothing more can come

        etcd.start()
        leases, revision = reg.list_leases("weft")
        again = Recorder()
        cancel = reg.watch_leases("weft", revision + 1, again)
        reg.create_lease("weft", "10.244.1.0-24", "back", ttl=60)
        assert again.wait(1)[0][:3] == ("put", "10.244.1.0-24", "back")
        cancel()
        wait_for(lambda: threading.active_count() <= threads_before, "gRPC threads to end", timeout=5)
    finally:
        reg.close()


# ---- connection failures and failover ----

def test_unreachable_etcd_raises_registry_error_naming_the_endpoint():
    endpoint = f"http://127.0.0.1:{free_port()}"
    reg = EtcdRegistry([endpoint], timeout=2.0)
    with pytest.raises(RegistryError, match=f"etcd at {endpoint} is unreachable"):
        reg.get_network_config("weft")
    with pytest.raises(RegistryError, match=f"etcd at {endpoint}"):
        reg.watch_leases("weft", 0, Recorder())


def test_failover_to_the_next_endpoint(shared_etcd):
    dead = [f"http://127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    with EtcdRegistry([dead[0], shared_etcd.endpoint]) as reg:
        assert reg.connect() == shared_etcd.endpoint
        assert reg.get_network_config("absent") is None
    with EtcdRegistry(dead) as reg:
        with pytest.raises(RegistryError) as failure:
            reg.connect()
        assert dead[0] in str(failure.value) and "http://" + dead[1] in str(failure.value)


def test_bad_endpoints_are_refused():
    for bad in ("ftp://127.0.0.1:2379", "http://127.0.0.1:notaport", "http:///path"):
        with pytest.raises(RegistryError, match="invalid etcd endpoint"):
            EtcdRegistry([bad])
    with pytest.raises(RegistryError):
        EtcdRegistry([])


# ---- TLS and auth ----

def test_tls_needs_the_client_certificate(tmp_path):
    server = EtcdServer(tmp_path / "etcd", tls=True)
    try:
        server.start()
        kwargs = server.client_kwargs()
        with EtcdRegistry([server.endpoint], **kwargs) as reg:
            reg.put_network_config("weft", "{}")
            assert reg.network_names() == ["weft"]
            granted = _many_leases(reg, "weft")
            _round_reads_every_ttl(reg, granted)  # TLS with a client certificate
        _weftctl_shows_every_ttl("weft", granted, ["--etcd-endpoints", server.endpoint,
                                                   "--etcd-cafile", kwargs["cafile"],
                                                   "--etcd-certfile", kwargs["certfile"],
                                                   "--etcd-keyfile", kwargs["keyfile"]])
        with EtcdRegistry([server.endpoint], cafile=kwargs["cafile"]) as reg:
            with pytest.raises(RegistryError,
                               match=f"TLS handshake with {server.endpoint} failed.*client certificate"):
                reg.network_names()
        with EtcdRegistry([server.endpoint]) as reg:  # system CAs do not know the test CA
            with pytest.raises(RegistryError, match="TLS handshake.*CERTIFICATE_VERIFY_FAILED"):
                reg.network_names()
    finally:
        server.stop()


def test_auth_accepts_the_right_password_only(tmp_path):
    server = EtcdServer(tmp_path / "etcd", auth=True, extra_args=["--auth-token-ttl", "1"])
    try:
        server.start()
        kwargs = server.client_kwargs()
        with EtcdRegistry([server.endpoint], **kwargs) as reg:
            reg.put_network_config("weft", "{}")
            # The simple token expires 1 s after its last use.  No probe can see that happen:
            # any call made with the token would refresh it, so this wait is the scenario itself.
            time.sleep(2.5)  # the simple token expires; the registry renews it
            assert reg.get_network_config("weft") == "{}"
            time.sleep(2.5)  # expired again: a watch made with it would be cancelled at once
            events = Recorder()
            cancel = reg.watch_leases("weft", 0, events)
            reg.create_lease("weft", "10.244.1.0-24", "v", ttl=60)
            assert events.wait(1)[0][:2] == ("put", "10.244.1.0-24")
            cancel()
            granted = _many_leases(reg, "weft")
            _round_reads_every_ttl(reg, granted)  # the token travels on every call of the round
            time.sleep(2.5)  # expired: the round renews it and reads every TTL
            ttls = reg.lease_ttls(sorted(granted))
            assert sorted(ttls) == sorted(granted) and min(ttls.values()) == -1
        _weftctl_shows_every_ttl("weft", granted, ["--etcd-endpoints", server.endpoint,
                                                   "--etcd-username", kwargs["username"]],
                                 password=kwargs["password"])
        with EtcdRegistry([server.endpoint], username=kwargs["username"], password="wrong") as reg:
            with pytest.raises(RegistryError, match="rejected the credentials for user weft"):
                reg.network_names()
        with EtcdRegistry([server.endpoint]) as reg:
            with pytest.raises(RegistryError, match="requires a username"):
                reg.network_names()
        with EtcdRegistry([server.endpoint], prefix="/elsewhere", **kwargs) as reg:
            with pytest.raises(RegistryError, match="denied user weft"):
                reg.put_network_config("weft", "{}")
    finally:
        server.stop()


# ---- history ----

def record(ts: str, ip: str, event: str = "allocate") -> dict:
    return {"ts": ts, "event": event, "ip": ip, "containerID": "c-" + ip, "ifname": "eth0"}


def test_history_put_list_and_retention(registry, net):
    a = [record("2026-11-20T10:00:00Z", "10.244.1.2"), record("2026-11-20T12:00:00.5Z", "10.244.1.2", "release")]
    b = [record("2026-11-20T11:00:00Z", "10.244.2.2")]
    assert registry.put_history(net, "node-a", a) == 2
    assert registry.put_history(net, "node-a", a) == 2          # idempotent: same keys
    registry.put_history(net, "node-b", b)
    registry.put_history(net + "x", "node-c", [record("2026-11-20T09:00:00Z", "10.9.0.1")])

    got = registry.history(net)
    assert [(r["node"], r["ip"], r["event"]) for r in got] == [
        ("node-a", "10.244.1.2", "allocate"), ("node-b", "10.244.2.2", "allocate"),
        ("node-a", "10.244.1.2", "release")]
    assert all(r["network"] == net for r in got)
    everywhere = [r for r in registry.history() if r["network"] in (net, net + "x")]
    assert [r["node"] for r in everywhere] == ["node-c", "node-a", "node-b", "node-a"]

    assert registry.delete_history_before(net, "2026-11-20T11:00:00Z") == 1
    assert [r["ts"] for r in registry.history(net)] == ["2026-11-20T11:00:00Z", "2026-11-20T12:00:00.5Z"]
    assert registry.delete_history_before(net, "2026-11-21T00:00:00+00:00") == 2
    assert registry.history(net) == []
    assert len(registry.history(net + "x")) == 1


def test_history_in_large_batches_pages_through(registry, net):
    records = [record(f"2026-11-20T10:{i // 60:02d}:{i % 60:02d}Z", f"10.244.{i // 250}.{i % 250 + 1}")
               for i in range(1200)]
    assert registry.put_history(net, "node-a", records) == 1200
    got = registry.history(net)
    assert len(got) == 1200 and [r["ip"] for r in got] == [r["ip"] for r in records]
    assert registry.delete_history_before(net, "2026-11-20T10:10:00Z") == 600


def test_history_records_without_a_usable_ts_are_skipped(registry, net):
    good = record("2026-11-20T10:00:00Z", "10.0.0.2")
    assert registry.put_history(net, "node-a", [{"ip": "10.0.0.1"}, {"ts": "yesterday"}, good]) == 1
    assert [r["ip"] for r in registry.history(net)] == ["10.0.0.2"]
