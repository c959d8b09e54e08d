"""cni_plugin.ipam.store: file layout, modes, O_EXCL, index, locking, STATUS probe."""

import errno
import ipaddress
import fcntl
import os
import stat
import threading
import time

import pytest

from cni_plugin.ipam.store import Attachment, Store, usability_problem

A = ipaddress.ip_address
ME = Attachment("c1", "eth0")
OTHER = Attachment("c2", "eth0")


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "data"), "weft")
    s.ensure_dirs()
    return s


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def no_umask():
    old = os.umask(0)
    yield
    os.umask(old)


def test_modes_are_private_even_with_umask_zero(tmp_path, no_umask):
    s = Store(str(tmp_path / "data"), "weft")
    with s.locked():
        s.write_index(ME, [A("10.1.0.2")])
        assert s.reserve(A("10.1.0.2"), ME)
        s.set_last_reserved(0, A("10.1.0.2"))
    assert mode(s.dir) == 0o700
    assert mode(s.index_dir) == 0o700
    for name in ("10.1.0.2", "last_reserved_ip.0", "lock", "by-attachment/c1:eth0"):
        assert mode(os.path.join(s.dir, name)) == 0o600, name


def test_ip_file_is_host_local_format(store):
    assert store.reserve(A("fd00::5"), ME)
    with open(os.path.join(store.dir, "fd00::5"), "rb") as f:
        assert f.read() == b"c1\r\neth0"
    assert store.holder(A("fd00::5")) == ME


def test_reserve_is_exclusive(store):
    assert store.reserve(A("10.1.0.2"), ME)
    assert not store.reserve(A("10.1.0.2"), OTHER)
    assert store.holder(A("10.1.0.2")) == ME
    assert store.is_taken(A("10.1.0.2")) and not store.is_taken(A("10.1.0.3"))


def test_release_only_when_the_file_names_the_attachment(store):
    store.reserve(A("10.1.0.2"), OTHER)
    assert not store.release(A("10.1.0.2"), ME)
    assert store.holder(A("10.1.0.2")) == OTHER
    assert store.release(A("10.1.0.2"), OTHER)
    assert store.holder(A("10.1.0.2")) is None


def test_index_round_trip_leaves_no_temp_file(store):
    store.write_index(ME, [A("10.1.0.2"), A("fd00::2")])
    assert store.indexed_ips(ME) == [A("10.1.0.2"), A("fd00::2")]
    assert os.listdir(store.index_dir) == ["c1:eth0"]
    with open(os.path.join(store.index_dir, "c1:eth0")) as f:
        assert f.read() == "10.1.0.2\nfd00::2\n"
    store.remove_index(ME)
    assert store.indexed_ips(ME) is None
    store.remove_index(ME)  # idempotent


def test_last_reserved_round_trip(store):
    assert store.last_reserved(1) is None
    store.set_last_reserved(1, A("fd00::7"))
    assert store.last_reserved(1) == A("fd00::7")
    assert store.last_reserved(0) is None


def test_walks_list_attachments_and_ip_files_only(store):
    store.write_index(ME, [A("10.1.0.2")])
    store.reserve(A("10.1.0.2"), ME)
    store.reserve(A("fd00::3"), OTHER)
    store.set_last_reserved(0, A("10.1.0.2"))
    assert store.indexed_attachments() == [ME]
    assert sorted(map(str, store.ip_files())) == ["10.1.0.2", "fd00::3"]


def test_remove_temp_files(store):
    for d in (store.dir, store.index_dir):
        open(os.path.join(d, ".x.tmp"), "w").close()
    store.remove_temp_files()
    assert not os.path.exists(os.path.join(store.dir, ".x.tmp"))
    assert not os.path.exists(os.path.join(store.index_dir, ".x.tmp"))


def test_attachment_key_round_trip():
    assert Attachment.from_key(ME.key) == ME
    assert Attachment.from_key("no-colon") is None


def _second_locker(store, exclusive, acquired):
    with store.locked(exclusive=exclusive):
        acquired.set()


@pytest.mark.parametrize("second_exclusive", [True, False])
def test_exclusive_lock_blocks_other_threads(store, second_exclusive, monkeypatch):
    acquired, refused = threading.Event(), threading.Event()
    real_flock = fcntl.flock

    def flock(fd, op):  # the bounded wait polls: record each refusal it meets
        try:
            return real_flock(fd, op)
        except BlockingIOError:
            refused.set()
            raise

    monkeypatch.setattr(fcntl, "flock", flock)
    with store.locked():
        t = threading.Thread(target=_second_locker, args=(store, second_exclusive, acquired))
        t.start()
        assert refused.wait(10), "the second locker never tried the store's flock"
        assert not acquired.is_set(), "the second locker got the lock while it was held"
    assert acquired.wait(10), "the second locker never got the lock after it was released"
    t.join()


def test_shared_locks_coexist(store):
    acquired = threading.Event()
    with store.locked(exclusive=False):
        t = threading.Thread(target=_second_locker, args=(store, False, acquired))
        t.start()
        assert acquired.wait(5)
    t.join()


def test_usability_of_a_creatable_dir_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "weft"
    assert usability_problem(str(target)) is None
    assert os.listdir(tmp_path) == []


def test_usability_problem_when_a_parent_is_a_file(tmp_path):
    (tmp_path / "data").write_text("not a dir")
    problem = usability_problem(str(tmp_path / "data" / "weft"))
    assert problem.errno == errno.ENOTDIR
    assert str(tmp_path / "data") in str(problem)


def test_usability_of_existing_dir(store):
    assert usability_problem(store.dir) is None
