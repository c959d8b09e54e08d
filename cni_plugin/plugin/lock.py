"""One lock per attachment: ADD, DEL and CHECK of (containerID, ifname) never overlap.

The lock is a flock on <dataDir>/locks/<host veth name> (the veth name is a digest of
containerID/ifname, so no runtime string becomes a file name), taken the same way by
the standalone executables and by weftd's workers: both paths serialize.  Waits are
bounded (netconf `lockTimeout`) and end in code 11.  ADD records its stage in the
file ("adding", then "added"), so a later ADD can tell the debris of a call that died
mid-way (its agent killed) from a live attachment.  DEL and a rolled-back ADD remove
the file while they hold it; a waiter that then wins the unlinked file notices (the
inode at the path changed) and locks the new one.  GC probes a lock without waiting
to leave attachments alone that a call is working on.
"""

import errno
import os

from ..cni import caller
from ..cni.errors import IO_FAILURE, TRY_AGAIN_LATER, CniError
from ..fsutil import LockTimeout, flock_bounded

LOCK_DIR = "locks"



def lock_path(data_dir: str, host_veth: str) -> str:
    return os.path.join(data_dir, LOCK_DIR, host_veth)


def _open(path: str, command: str):
    """A descriptor on the lock file; None when a read-only dataDir has none (then no
    ADD can hold it either, and DEL/CHECK go on without it)."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.ENOSPC, errno.EDQUOT):
            raise CniError(IO_FAILURE, f"cannot create the attachment lock {path}: {exc.strerror}; "
                           "check the plugin's dataDir")
        problem = exc
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)  # flock needs no write
    except FileNotFoundError:
        if command == "ADD":
            raise CniError(IO_FAILURE, f"cannot create the attachment lock {path}: "
                           f"{problem.strerror}; the plugin's dataDir must be writable")
        return None
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot open the attachment lock {path}: {exc.strerror}")


ADDING = "adding"  # an ADD began: if the file still says so, that ADD died mid-way
ADDED = "added"


class Held:
    """The held lock; set .remove to delete the file on release (DEL, failed ADD).
    The file's content is the attachment's last recorded stage (state/mark)."""

    def __init__(self, path: str, fd):
        self.path, self.fd, self.remove = path, fd, False

    def state(self) -> str:
        if self.fd is None:
            return ""
        return os.pread(self.fd, 64, 0).decode(errors="replace").strip()

    def mark(self, stage: str) -> None:
        """Not fsync'd: after a power cut the kernel state it describes is gone too."""
        data = (stage + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)


class attachment:
    """with attachment(data_dir, host_veth, command, timeout) as held: the attachment's
    lock (a Held) for the block.  A class rather than contextlib.contextmanager, whose
    import costs a standalone call ~1 ms."""

    def __init__(self, data_dir: str, host_veth: str, command: str, timeout: float):
        self.path, self.command, self.timeout = lock_path(data_dir, host_veth), command, timeout
        self.held = None

    def __enter__(self) -> Held:
        path, command = self.path, self.command
        while True:
            fd = _open(path, command)
            if fd is None:
                self.held = Held(path, None)
                return self.held
            try:
                flock_bounded(fd, True, self.timeout, path, caller.gone)
                if _same_file(fd, path):
                    self.held = Held(path, fd)
                    return self.held
            except LockTimeout as exc:
                os.close(fd)
                if caller.gone():
                    raise caller.CallerLeft(f"while {command} waited for {path}")
                raise CniError(TRY_AGAIN_LATER, f"{command}: another call on this attachment holds "
                               f"{path}: {exc}; retry later")
            os.close(fd)  # the file was removed while we waited: lock the new one

    def __exit__(self, *exc):
        held = self.held
        if held.fd is not None:
            if held.remove:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass  # a leftover file only costs an inode; the next DEL removes it
            os.close(held.fd)


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def busy(data_dir: str, host_veth: str) -> bool:
    """True if a call holds this attachment's lock right now (GC: leave it alone)."""
    import fcntl

    try:
        fd = os.open(lock_path(data_dir, host_veth), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
