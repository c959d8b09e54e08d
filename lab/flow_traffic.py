"""Traffic of a known size for flow-record tests inside namespaces (stdlib only).

    python -m lab.flow_traffic sink ADDRESS PORT
        TCP: read each connection to its end, answer "ok"; UDP: answer "ok" to each
        datagram (prints "listening" once bound; runs until killed)
    python -m lab.flow_traffic send tcp|udp ADDRESS PORT BYTES [COUNT] [HOLD] [WAIT]
        TCP: one connection sending BYTES, then (after HOLD seconds of a byte every 0.5 s)
        closing; UDP: COUNT datagrams of BYTES from one socket, each answered.  WAIT
        (default 5) bounds each wait for the peer: an attempt a policy drops takes WAIT.
        Prints the local port and whether it got its answers as JSON.
"""

import json
import socket
import sys
import threading
import time

from lab.netpol_probe import _family, _udp_server, listeners

TIMEOUT = 5.0


def _tcp_conn(conn):
    with conn:
        conn.settimeout(60)
        try:
            while conn.recv(65536):
                pass
            conn.sendall(b"ok")
        except OSError:
            pass


def _tcp(listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_tcp_conn, args=(conn,), daemon=True).start()


def sink(address, port):
    tcp, udp = listeners(address, port)
    threading.Thread(target=_tcp, args=(tcp,), daemon=True).start()
    threading.Thread(target=_udp_server, args=(udp,), daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


def send(protocol, address, port, size, count=1, hold=0.0, wait=TIMEOUT):
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    answered = 0
    with socket.socket(_family(address), kind) as sock:
        sock.settimeout(wait)
        try:
            if protocol == "tcp":
                sock.connect((address, port))
                local = sock.getsockname()[1]
                sock.sendall(b"x" * size)
                deadline = time.monotonic() + hold
                while time.monotonic() < deadline:
                    time.sleep(0.5)
                    sock.sendall(b"y")
                sock.shutdown(socket.SHUT_WR)
                answered = int(sock.recv(2) == b"ok")
            else:
                sock.bind(("::" if ":" in address else "0.0.0.0", 0))
                local = sock.getsockname()[1]
                for _ in range(count):
                    sock.sendto(b"x" * size, (address, port))
                    try:
                        answered += sock.recvfrom(64)[0] == b"ok"
                    except OSError:
                        pass
        except OSError:
            local = sock.getsockname()[1] if sock.fileno() >= 0 else None
    print(json.dumps({"port": local, "answered": answered}))


if __name__ == "__main__":
    if sys.argv[1] == "sink":
        sink(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
             *(int(a) if i == 0 else float(a) for i, a in enumerate(sys.argv[6:9])))
    else:
        sys.exit("usage: flow_traffic sink ADDRESS PORT | send tcp|udp ADDRESS PORT BYTES [COUNT] [HOLD] [WAIT]")
