"""The caller-left protocol between the forwarder and weftd, and input checks (pure
logic over real sockets, no root)."""

import os
import socket
import threading

import pytest

from cni_plugin import forwarder
from cni_plugin.agent.cni_server import caller_left
from cni_plugin.cni import caller, env, wire
from cni_plugin.cni.errors import CniError
from cni_plugin.subnet.etcd_transport import EtcdTransport
from cni_plugin.subnet.registry import RegistryError

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/x",
       "CNI_PATH": "/opt/cni/bin"}


def test_caller_left_sees_a_close_and_a_half_close_but_not_a_waiting_peer():
    for hang_up in (socket.socket.close, lambda s: s.shutdown(socket.SHUT_WR)):
        agent, runtime = socket.socketpair()
        with agent:
            assert not caller_left(agent)
            hang_up(runtime)
            assert caller_left(agent)
        runtime.close()


def test_the_probe_is_per_thread_and_check_raises_code_11():
    caller.set_probe(lambda: True)
    try:
        seen = []
        other = threading.Thread(target=lambda: seen.append(caller.gone()))
        other.start()
        other.join()
        assert seen == [False]  # another worker's caller is not ours
        with pytest.raises(caller.CallerLeft) as raised:
            caller.check("before ADD committed")
        assert raised.value.code == 11 and "undid its changes" in raised.value.msg
    finally:
        caller.set_probe(None)
    assert not caller.gone()


def _fake_agent(listener, reply_on_eof: bytes, answered: list):
    conn, _ = listener.accept()
    with conn:
        wire.read_request(conn)
        while conn.recv(1):
            pass  # until the forwarder hangs up its sending half
        answered.append(True)
        conn.sendall(reply_on_eof)


def test_forwarder_at_its_deadline_half_closes_and_relays_the_abandonment(tmp_path):
    path = str(tmp_path / "agent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    answered = []
    reply = wire.encode_reply(b'{"code": 11, "msg": "abandoned"}', 1)
    agent = threading.Thread(target=_fake_agent, args=(listener, reply, answered))
    agent.start()
    try:
        out, code = forwarder.ask_agent(path, "weft", ENV, b"{}", timeout=0.2)
    finally:
        agent.join(10)
        listener.close()
    assert answered == [True] and code == 1 and b"abandoned" in out


@pytest.mark.parametrize("value", ["abc\n", "-leading", "a b", "a" * 201, "a/b"])
def test_container_id_outside_libcni_rules_is_code_4(value):
    with pytest.raises(CniError) as raised:
        env.parse({**ENV, "CNI_CONTAINERID": value})
    assert raised.value.code == 4 and "CNI_CONTAINERID" in raised.value.msg


def test_container_id_at_the_limit_is_fine():
    assert env.parse({**ENV, "CNI_CONTAINERID": "a" * env.CONTAINER_ID_MAX}).container_id


@pytest.mark.parametrize("kwargs", [{"cafile": "/ca.pem"}, {"certfile": "/c.pem", "keyfile": "/k.pem"}])
def test_tls_files_with_an_http_endpoint_are_refused(kwargs):
    with pytest.raises(RegistryError) as raised:
        EtcdTransport(["https://a:2379", "http://b:2379"], **kwargs)
    assert "http://b:2379" in str(raised.value) and "https://" in str(raised.value)
    assert "https://a:2379" not in str(raised.value).split("endpoint(s)")[1].split("use")[0]


def test_history_append_is_all_or_nothing_and_never_continues_a_torn_line(tmp_path, monkeypatch):
    from cni_plugin.ipam import history

    path = str(tmp_path / "history.jsonl")
    history.append(path, [{"event": "allocate", "ip": "10.0.0.2"}])
    before = open(path, "rb").read()
    real_write = os.write

    def full_disk(fd, data):  # what a full disk does: take what fits, then refuse
        if len(data) > 5:
            return real_write(fd, bytes(data[:5]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        history.append(path, [{"event": "release", "ip": "10.0.0.2"}])
    monkeypatch.setattr(os, "write", real_write)
    assert open(path, "rb").read() == before
    with open(path, "ab") as handle:
        handle.write(b'{"event": "rel')  # a line torn by a crash
    history.append(path, [{"event": "release", "ip": "10.0.0.3"}])
    lines = open(path, "rb").read().splitlines()
    assert lines[-1] == b'{"event":"release","ip":"10.0.0.3"}' and lines[-2] == b'{"event": "rel'
