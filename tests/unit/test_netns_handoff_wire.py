"""The pod's namespace handed over by descriptor (cni/wire.py, forwarder.open_netns,
datapath/netns.py): real sockets and real kernel objects, no root.  Every descriptor
that reaches the server half is closed on every refusal, and both halves interoperate
with the previous version's protocol code (lab/previous.py)."""

import os
import socket
import threading
import types

import pytest

from cni_plugin import forwarder
from cni_plugin.cni import wire
from cni_plugin.datapath import netns
from cni_plugin.datapath.errors import NetnsError
from lab import previous

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/proc/self/ns/net",
       "CNI_PATH": "/opt/cni/bin"}


def open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def same_object(fd: int, path: str) -> bool:
    mine, theirs = os.fstat(fd), os.stat(path)
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def serve_once(path: str, seen: list, reader=None):
    """A one-call agent: records (request, descriptor's identity) and answers 0."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def run():
        conn, _ = listener.accept()
        with conn:
            request = (reader or wire.read_request)(conn)
            fd = request[3] if len(request) > 3 else None
            seen.append((request[:3], fd is not None and same_object(fd, "/proc/self/ns/net")))
            if fd is not None:
                os.close(fd)
            conn.sendall(wire.encode_reply(b"{}", 0))
        listener.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("role,netns_path,handed", [
    ("weft", "/proc/self/ns/net", True),
    ("weft", "/nonexistent/pod", False),  # e.g. a DEL whose namespace is gone: the path alone
    ("weft-ipam", "/proc/self/ns/net", False),  # IPAM never enters the pod
])
def test_the_forwarder_hands_over_what_it_opened_and_keeps_no_copy(tmp_path, role, netns_path, handed):
    seen, before = [], open_fds()
    agent = serve_once(str(tmp_path / "agent.sock"), seen)
    out, code = forwarder.ask_agent(str(tmp_path / "agent.sock"), role, {**ENV, "CNI_NETNS": netns_path},
                                    b'{"cniVersion": "1.0.0"}', timeout=10)
    agent.join(10)
    assert (out, code) == (b"{}", 0)
    (request, got_netns), = seen
    assert request[0] == role and request[1]["CNI_NETNS"] == netns_path and got_netns is handed
    assert open_fds() == before


def test_open_netns_never_blocks_on_a_fifo_and_takes_bytes_or_str(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    for environ in ({"CNI_NETNS": fifo}, {b"CNI_NETNS": fifo.encode()}):
        fd = forwarder.open_netns(environ)  # a blocking open would wait for a writer forever
        assert fd is not None
        os.close(fd)
    assert forwarder.open_netns({}) is None and forwarder.open_netns({"CNI_NETNS": "/a\0b"}) is None


def long_request() -> bytes:
    return wire.encode_request("weft", ENV, b'{"cniVersion": "1.0.0", "pad": "' + b"x" * 600000 + b'"}')


def send(request: bytes, fds: list):
    """(server end, sender thread): `request` with `fds` attached, from a socketpair."""
    server, client = socket.socketpair()

    def write():
        with client:
            client.settimeout(10)  # as the forwarder's: a long request then goes out in parts
            wire.send_request(client, request, fds[0]) if len(fds) == 1 else \
                socket.send_fds(client, [request], fds)
            client.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=write)
    thread.start()
    return server, thread


def test_a_long_request_arrives_whole_with_its_descriptor():
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    server, writer = send(long_request(), [fd])  # more than the socket buffer: sent in parts
    with server:
        role, environ, stdin, got = wire.read_request(server)
    writer.join(10)
    os.close(fd)
    assert role == "weft" and environ == ENV and len(stdin) > 600000
    assert same_object(got, "/proc/self/ns/net")
    os.close(got)


@pytest.mark.parametrize("request_bytes,count,problem", [
    (wire.encode_request("weft", ENV, b"{}"), 2, "2 descriptors came with the request"),
    (wire.encode_request("weft", ENV, b"{}"), 5, "descriptors came with the request"),  # more than fit
    (b"NOT WEFT\n" + wire.encode_request("weft", ENV, b"{}"), 1, "not a weft request"),
    (wire.encode_request("weft", ENV, b"{}")[:15], 1, "closed the connection early"),
])
def test_every_descriptor_of_a_refused_request_is_closed(request_bytes, count, problem):
    before = open_fds()
    sent = [os.open("/proc/self/ns/net", os.O_RDONLY) for _ in range(count)]
    server, writer = send(request_bytes, sent)
    writer.join(10)
    for fd in sent:
        os.close(fd)  # the kernel's references remain until the server takes or drops them
    with server, pytest.raises((wire.ProtocolError, ConnectionError)) as raised:
        wire.read_request(server)
    assert problem in str(raised.value)
    assert open_fds() == before


def _module(name: str, text: str):
    module = types.ModuleType(name)
    exec(compile(text, f"{previous.BEFORE_NETNS_HANDOFF}:{name}", "exec"), module.__dict__)
    return module


def test_the_previous_server_half_parses_a_request_that_carries_a_descriptor_and_drops_it():
    old = _module("wire", previous.source("cni_plugin/cni/wire.py"))
    assert not hasattr(old, "send_request")  # really the protocol before the handoff
    before = open_fds()
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    server, writer = send(wire.encode_request("weft", ENV, b'{"a": 1}'), [fd])
    writer.join(10)
    os.close(fd)
    with server:
        assert old.read_request(server) == ("weft", ENV, b'{"a": 1}')  # plain recv(): no ancillary data
    assert open_fds() == before  # the kernel closed what nobody received


def test_a_request_of_the_previous_client_half_carries_no_descriptor(tmp_path):
    old = _module("wire", previous.source("cni_plugin/cni/wire.py"))
    server, client = socket.socketpair()
    with server, client:
        client.sendall(old.encode_request("weft", ENV, b"{}"))
        assert wire.read_request(server) == ("weft", ENV, b"{}", None)


@pytest.fixture
def held(tmp_path):
    """open(kind) -> a descriptor of a FIFO, a regular file, another kind of namespace,
    or this process's own network namespace; all closed afterwards."""
    fds = []
    fifo, plain = str(tmp_path / "fifo"), str(tmp_path / "plain")
    os.mkfifo(fifo)
    open(plain, "w").close()
    paths = {"fifo": fifo, "file": plain, "uts": "/proc/self/ns/uts", "own": "/proc/self/ns/net"}

    def make(kind):
        fds.append(os.open(paths[kind], netns.OPEN_FLAGS))
        return fds[-1]

    yield make
    for fd in fds:
        os.close(fd)


@pytest.mark.parametrize("kind,message", [
    ("fifo", "is not a namespace"), ("file", "is not a namespace"),
    ("uts", "is a namespace but not a network namespace"), ("own", "the plugin's own network namespace"),
])
def test_a_descriptor_handed_over_is_checked_itself_and_named_by_the_runtimes_path(held, kind, message):
    given = netns.PodNetns("/var/run/docker/netns/abc", held(kind))
    with pytest.raises(NetnsError) as raised:
        netns.check_container_netns(given)
    assert str(raised.value).startswith("CNI_NETNS /var/run/docker/netns/abc ") and message in str(raised.value)
    assert netns.netns_exists(given) is (kind == "own")
