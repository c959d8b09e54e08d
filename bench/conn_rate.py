"""New TCP connections per second between two namespaces: the same small loop on both
ends, stdlib only (iperf3 3.12 has no connect-rate mode and no such tool is installed
here: netperf is not in Debian 12, wrk and ab speak HTTP).

    python -m bench.conn_rate serve ADDRESS PORT SECONDS     # "listening", then answers for SECONDS at most
    python -m bench.conn_rate connect ADDRESS PORT SECONDS   # one JSON line: connections, seconds, per_s, errors

One connection = connect, send one byte, read the one-byte answer, read the server's
close, close: the HTTP/1.0 pattern.  The server closes first, so TIME_WAIT stays on
the server's side and the client's ephemeral ports never run out however long the
loop runs.  The client opens WARMUP connections (neighbour entries, conntrack, caches)
before its timed window.  Both loops are bounded in time; the caller stops the server
by its PID when the client is done.
"""

import json
import socket
import sys
import time

WARMUP = 50
TIMEOUT = 5.0
MAX_ERRORS = 100


def serve(address: str, port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(128)
        print("listening", flush=True)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            listener.settimeout(left)
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                return
            try:
                conn.settimeout(TIMEOUT)
                conn.recv(1)
                conn.sendall(b"y")
            except OSError:
                pass
            finally:
                conn.close()


def _one(target) -> None:
    with socket.create_connection(target, timeout=TIMEOUT) as conn:
        conn.sendall(b"x")
        if conn.recv(1) != b"y":
            raise ConnectionError("no answer")
        conn.recv(1)  # the server's close


def connect(address: str, port: int, seconds: float) -> dict:
    target = (address, port)
    errors = 0
    for _ in range(WARMUP):
        try:
            _one(target)
        except OSError:
            errors += 1
    count, errors = 0, 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline and errors < MAX_ERRORS:
        try:
            _one(target)
            count += 1
        except OSError:
            errors += 1
    elapsed = time.monotonic() - started
    return {"connections": count, "seconds": round(elapsed, 3), "per_s": round(count / elapsed, 1),
            "errors": errors}


if __name__ == "__main__":
    verb, addr, port_arg, seconds_arg = sys.argv[1:5]
    if verb == "serve":
        serve(addr, int(port_arg), float(seconds_arg))
    else:
        print(json.dumps(connect(addr, int(port_arg), float(seconds_arg))), flush=True)
