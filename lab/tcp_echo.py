"""A tiny TCP responder for reachability checks inside namespaces (stdlib only).

    python -m lab.tcp_echo serve ADDRESS PORT COUNT   # answer COUNT connections, then exit
    python -m lab.tcp_echo ask ADDRESS PORT [PAYLOAD] # prints the source address the server saw

The server answers each connection with the peer address it saw, so a test can
tell whether traffic was masqueraded on the way.
"""

import socket
import sys

TIMEOUT = 10.0


def serve(address: str, port: int, count: int) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(16)
        listener.settimeout(60)
        print("listening", flush=True)
        for _ in range(count):
            conn, peer = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                conn.recv(64)
                conn.sendall(peer[0].encode())


def ask(address: str, port: int, payload: str = "weft"):
    """The source address the server saw, or None when unreachable (payload: what is
    sent first, at most 64 bytes, e.g. a marker a capture looks for)."""
    try:
        with socket.create_connection((address, port), timeout=TIMEOUT) as conn:
            conn.sendall(payload.encode())
            return conn.recv(64).decode() or None
    except OSError:
        return None


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        seen = ask(sys.argv[2], int(sys.argv[3]), *sys.argv[4:5])
        print(seen or "")
        sys.exit(0 if seen else 1)
