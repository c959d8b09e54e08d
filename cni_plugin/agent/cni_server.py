"""The CNI fast path: weftd answers `weft`/`weft-ipam` invocations on a unix socket.

Handlers run in this warm process (pyroute2 and friends already imported), in a
bounded pool of threads; each call binds its own netlink sockets to the namespaces
it touches (the pod's: the descriptor weft's forwarder handed over with the call, else
CNI_NETNS's path, cni/wire.py), and weft-ipam allocates under the same file lock as the executable, so
the agent and standalone executables can serve the same node at once.

The caller's connection is watched: a `weft` process that was killed, or that gave up
at its deadline (it then shuts its sending half), shows as end-of-file on the socket.
cni/caller.py hands the handlers that test; they ask it while waiting for a lock and
before they commit, and roll back instead of finishing a call nobody waits for (a
DEL the runtime sends next would otherwise run first and the ADD complete after it).
"""

import os
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..cni import caller, wire
from ..roles import invoke

WORKERS = 16
READ_TIMEOUT = 30.0


class CniServer:
    def __init__(self, path: str, log, metrics=None, masquerades=None, attaching=None, teardown=None,
                 detaching=None, bridges=None):
        self.path = path
        self.bridges = bridges  # datapath/bridge_facts.py: bridges ADDs need not read again
        self.teardown = teardown  # agent/teardown_queue.py: DELs finish off the caller's path
        self.detaching = detaching  # (network, ips): addresses leave the policy sets
        self.attaching = attaching  # the policy fast path: (network, ips, namespace, name)
        self.masquerades = masquerades  # network name -> True when this agent owns its table
        self.log = log
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="weftd-cni")
        self.listener = None
        self.thread = None
        self.in_flight = 0  # calls being served, and when the last began (the teardown yields to them)
        self.last_call = 0.0
        self.counting = threading.Lock()

    def start(self):
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        try:
            os.unlink(self.path)  # a previous agent's socket
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # born 0600: root only, never briefly open to others
        try:
            listener.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        listener.listen(128)
        self.listener = listener
        self.thread = threading.Thread(target=self._accept, name="weftd-cni-accept", daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed by stop()
            self.pool.submit(self._serve, conn)

    def _serve(self, conn):
        with conn:
            conn.settimeout(READ_TIMEOUT)
            try:
                role, environ, stdin, netns_fd = wire.read_request(conn)
            except (OSError, ValueError) as exc:  # wire closed any descriptor that came along
                self.log.warning(f"bad CNI request on {self.path}: {exc}")
                return
            started = time.monotonic()
            caller.set_probe(lambda: caller_left(conn))
            with self.counting:
                self.in_flight += 1
                self.last_call = time.monotonic()
            try:
                out, code = invoke(role, environ, stdin, via="agent", agent_masquerades=self.masquerades,
                                   agent_attaching=self.attaching, netns_fd=netns_fd,
                                   teardown=self.teardown, agent_detaching=self.detaching, bridges=self.bridges)
            finally:
                with self.counting:
                    self.in_flight -= 1
                caller.set_probe(None)
                if netns_fd is not None:  # held open, it would pin a dead pod's namespace and veth
                    os.close(netns_fd)
            if caller_left(conn):
                what = "had already committed" if code == 0 else "did not complete (nothing it made is left)"
                self.log.warning(f"CNI {environ.get('CNI_COMMAND')} for {environ.get('CNI_CONTAINERID')} "
                                 f"{environ.get('CNI_IFNAME')}: the caller went away; the call {what} "
                                 f"(exit {code})")
            if self.metrics is not None:
                self.metrics.cni_seconds.labels(role, environ.get("CNI_COMMAND", ""), str(code)).observe(
                    time.monotonic() - started)
            try:
                conn.sendall(wire.encode_reply(out, code))
            except OSError as exc:  # the caller is gone (logged above)
                self.log.warning(f"CNI {environ.get('CNI_COMMAND')} for "
                                 f"{environ.get('CNI_CONTAINERID')} finished after its caller left: {exc}")

    def stop(self):
        if self.listener is not None:
            self.listener.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.pool.shutdown(wait=True)


_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0x2000)


def caller_left(conn) -> bool:
    """True once the peer closed or shut its sending half (a request is complete when
    the handler runs, so any end-of-file means the caller is gone)."""
    poller = select.poll()
    poller.register(conn, select.POLLIN | _HANGUP)
    events = poller.poll(0)
    if not events:
        return False
    if events[0][1] & _HANGUP:
        return True
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
