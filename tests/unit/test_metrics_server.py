"""weftd's HTTP endpoints: served at once, asleep between clients, stopped at once."""

import socket
import time
import urllib.request

from cni_plugin.agent import metrics as metrics_mod


def _switches(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as handle:
        return int(handle.read().split("voluntary_ctxt_switches:")[1].split()[0])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_endpoints_answer_and_the_idle_thread_never_wakes():
    port = _free_port()
    server = metrics_mod.serve("127.0.0.1", port, metrics_mod.Metrics(), lambda: (True, "ok"),
                               lambda: (False, "weft: starting"))
    try:
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as reply:
            assert b"weft_reconcile_duration_seconds" in reply.read()
        with urllib.request.urlopen(base + "/healthz", timeout=5) as reply:
            assert reply.read() == b"ok\n"
        try:
            urllib.request.urlopen(base + "/readyz", timeout=5)
            raise AssertionError("/readyz answered 200 while not ready")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and exc.read() == b"weft: starting\n"
        # a client that connects and leaves before being served stalls nothing
        socket.create_connection(("127.0.0.1", port)).close()
        with urllib.request.urlopen(base + "/healthz", timeout=5) as reply:
            assert reply.status == 200
        # between clients the thread sleeps (serve_forever would wake every 0.5 s)
        before = _switches(server.thread.native_id)
        time.sleep(1.6)
        assert _switches(server.thread.native_id) == before
    finally:
        server.shutdown()
    assert not server.thread.is_alive()
    with socket.socket() as probe:  # nothing listens there any more
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # served connections linger in TIME_WAIT
        probe.bind(("127.0.0.1", port))
