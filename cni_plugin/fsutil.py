"""Replacing a file atomically: the one helper every writer of weft state uses.

Policy: the new content goes to a temporary file beside the target (named
`.<name>.<pid>.<thread>.tmp`, so concurrent writers never share one), is renamed over
the target, and
  durable=True   the file is fsync'd before the rename and its directory after it:
                 for state whose loss after a power cut would lose or duplicate
                 something (the recorded lease, the VTEP MAC, the subnet file the
                 plugin trusts; not weft-ipam's address files, whose pods a power cut
                 ends anyway: see ipam/store.py);
  durable=False  no fsync: for hints and derived state that is rewritten anyway
                 (round-robin position, status files, upload offsets).
A crash can leave a temporary file behind; `is_temp_name` recognises them for cleanup.
"""

import os
from _thread import get_ident  # threading.get_ident is this; `threading` costs a standalone call ~1.5 ms

TEMP_SUFFIX = ".tmp"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_atomic(path: str, data, mode: int = 0o600, durable: bool = True,
                 make_dirs: bool = False) -> None:
    """Replace `path` with `data` (bytes or str) according to the policy above."""
    directory, name = os.path.split(path)
    directory = directory or "."
    if make_dirs:
        os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    temp = os.path.join(directory, f".{name}.{os.getpid()}.{get_ident()}{TEMP_SUFFIX}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask said
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        fsync_dir(directory)


class LockTimeout(OSError):
    """A bounded flock wait ran out (or the caller of the call it served went away)."""


class Flocked:
    """A with-block holding an open descriptor's flock (flock_bounded: LockTimeout when
    it stays taken); the descriptor is closed, and so unlocked, when the block ends or
    the lock is not had.  A class rather than contextlib.contextmanager: importing
    contextlib costs every standalone CNI call ~1 ms."""

    def __init__(self, fd: int, exclusive: bool, timeout: float, path: str, abandoned=None):
        self.fd, self.exclusive, self.timeout, self.path, self.abandoned = fd, exclusive, timeout, path, abandoned

    def __enter__(self):
        try:
            flock_bounded(self.fd, self.exclusive, self.timeout, self.path, self.abandoned)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the flock


def flock_bounded(fd: int, exclusive: bool, timeout: float, path: str, abandoned=None) -> None:
    """flock(fd) within `timeout` seconds, polling (flock itself cannot time out);
    `abandoned()`: stop waiting early when it turns true.  LockTimeout otherwise."""
    import fcntl
    import time

    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        try:
            fcntl.flock(fd, mode)
            return
        except BlockingIOError:
            pass
        if abandoned is not None and abandoned():
            raise LockTimeout(f"gave up waiting for {path}: the caller went away")
        if time.monotonic() >= deadline:
            raise LockTimeout(f"{path} is still held by another call after {timeout:g}s")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
