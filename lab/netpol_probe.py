"""Reachability probes for NetworkPolicy tests inside namespaces (stdlib only).

    python -m lab.netpol_probe serve ADDRESS PORT [PORT ...]
        answer TCP and UDP on every PORT until killed (prints "listening" once bound)
    python -m lab.netpol_probe ask TIMEOUT ADDRESS/PROTO/PORT [...]
        probe every target at once (a thread each); prints a JSON list of booleans

A TCP probe passes when the connection is accepted and the server's "ok" arrives; a
UDP probe passes when the server's reply to one datagram arrives within TIMEOUT.
"""

import json
import socket
import sys
import threading


def _family(address: str):
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _tcp_server(listener):
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                conn.sendall(b"ok")
            except OSError:
                pass


def _udp_server(sock):
    while True:
        _, peer = sock.recvfrom(64)
        try:
            sock.sendto(b"ok", peer)
        except OSError:
            pass


def listeners(address: str, port: int) -> tuple:
    """(TCP listening socket, UDP socket), both bound to address:port."""
    tcp = socket.socket(_family(address), socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((address, port))
    tcp.listen(64)
    udp = socket.socket(_family(address), socket.SOCK_DGRAM)
    udp.bind((address, port))
    return tcp, udp


def serve(address: str, ports) -> None:
    threads = []
    for port in ports:
        tcp, udp = listeners(address, port)
        threads += [threading.Thread(target=_tcp_server, args=(tcp,), daemon=True),
                    threading.Thread(target=_udp_server, args=(udp,), daemon=True)]
    for thread in threads:
        thread.start()
    print("listening", flush=True)
    threading.Event().wait()


def probe(address: str, protocol: str, port: int, timeout: float) -> bool:
    kind = socket.SOCK_STREAM if protocol == "TCP" else socket.SOCK_DGRAM
    with socket.socket(_family(address), kind) as sock:
        sock.settimeout(timeout)
        try:
            if protocol == "TCP":
                sock.connect((address, port))
                return sock.recv(2) == b"ok"
            sock.sendto(b"?", (address, port))
            return sock.recvfrom(64)[0] == b"ok"
        except OSError:
            return False


def ask(timeout: float, targets) -> list:
    results = [False] * len(targets)

    def one(index, target):
        address, protocol, port = target.rsplit("/", 2)
        results[index] = probe(address, protocol, int(port), timeout)

    threads = [threading.Thread(target=one, args=(i, t)) for i, t in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], [int(p) for p in sys.argv[3:]])
    elif sys.argv[1] == "ask":
        print(json.dumps(ask(float(sys.argv[2]), sys.argv[3:])))
    else:
        sys.exit("usage: netpol_probe serve ADDRESS PORT... | ask TIMEOUT ADDRESS/PROTO/PORT...")
