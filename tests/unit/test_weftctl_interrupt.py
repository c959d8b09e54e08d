"""Ctrl-C ends a weftctl that waits for etcd at once (no etcd: a port that accepts TCP
connections and never answers, so the call would wait for its whole deadline)."""

import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ctrl_c_ends_a_waiting_weftctl_at_once():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = "http://127.0.0.1:%d" % silent.getsockname()[1]
        # SIGINT as a terminal leaves it: a suite started in the background by a
        # non-interactive shell inherits SIGINT ignored, and Python then keeps it ignored
        proc = subprocess.Popen([sys.executable, "-m", "cni_plugin.cli.weftctl", "leases", "--ttl",
                                 "--etcd-endpoints", endpoint], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            # wait until it is blocked on etcd: its connection has reached the socket
            silent.settimeout(30)
            peer, _ = silent.accept()
            time.sleep(0.3)
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            took = time.monotonic() - sent
            peer.close()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert err.strip() == "weftctl: interrupted", err
    assert took < 2.0, f"weftctl took {took:.1f}s to stop after SIGINT (etcd's deadline is 5 s)"
