"""The on-disk allocation store of one network: dataDir/<network>/, host-local compatible.

Layout (directories 0700, files 0600):
  <ip>                            one file per allocated address: "<containerID>\\r\\n<ifname>"
  by-attachment/<cid>:<ifname>    the attachment's addresses, one per line (written first)
  last_reserved_ip.<rangeSet>     where the round-robin continues
  history.jsonl                   allocation history (see history.py)
  lock                            flock: exclusive for changes, shared for reads

Durability: address files and the per-attachment index are written atomically (an
O_EXCL create; a rename) but not fsync'd, as host-local writes them.  They describe
pods, and no pod outlives what fsync protects against (a power cut or kernel crash
ends every network namespace on the node): a file lost that way belonged to a dead
pod, a release lost that way leaves a stale file that DEL/GC of the dead pod removes.
The history journal (history.py) stays fsync'd: it is the audit record `weftctl whois`
answers from, and one fsync per call is its whole cost.  The four fsyncs dropped here
(file + directory, twice) cost ~1 ms p50 per pair on the benchmark machine, 8 ms at worst.

Methods other than locked() and exists() expect the caller to hold the lock.
Each locked() call opens its own descriptor, so threads of one process serialize too.
"""

import errno
import ipaddress
import os
import stat
from collections import namedtuple

from ..fsutil import Flocked, fsync_dir, is_temp_name, write_all, write_atomic

DIR_MODE = 0o700
FILE_MODE = 0o600
INDEX_DIR = "by-attachment"
LAST_RESERVED_PREFIX = "last_reserved_ip."
HISTORY_FILE = "history.jsonl"
LOCK_FILE = "lock"
LOCK_TIMEOUT = 30.0  # seconds; the lock is held for milliseconds, so this means a stuck holder


class Attachment(namedtuple("Attachment", "container_id ifname")):  # not typing's: ~3 ms of a call
    """What an address is allocated to: (CNI_CONTAINERID, CNI_IFNAME)."""

    __slots__ = ()

    @property
    def key(self) -> str:
        return f"{self.container_id}:{self.ifname}"

    @property
    def indexable(self) -> bool:
        """Whether key is a safe file name in by-attachment/ (CNI_* values always are)."""
        unsafe = "/" in self.key or "\0" in self.key
        return self.container_id[:1].isalnum() and bool(self.ifname) and not unsafe

    @classmethod
    def from_key(cls, key: str) -> "Attachment | None":
        container_id, sep, ifname = key.rpartition(":")
        return cls(container_id, ifname) if sep and container_id and ifname else None

    def __str__(self) -> str:
        return f"container {self.container_id} interface {self.ifname}"


def _parse_ip(text: str):
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _mkdir_private(path: str) -> None:
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)  # whatever the umask said


class Store:
    """Allocations of one network under dataDir/<network>."""

    def __init__(self, data_dir: str, network: str):
        self.data_dir = data_dir
        self.network = network
        self.dir = os.path.join(data_dir, network)
        self.index_dir = os.path.join(self.dir, INDEX_DIR)
        self.history_path = os.path.join(self.dir, HISTORY_FILE)

    # --- locking and layout -------------------------------------------------

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def ensure_dirs(self) -> None:
        os.makedirs(self.data_dir, mode=0o755, exist_ok=True)
        _mkdir_private(self.dir)
        _mkdir_private(self.index_dir)

    def locked(self, exclusive: bool = True, abandoned=None) -> Flocked:
        """The store's flock, held by a with-block (fsutil.LockTimeout after
        LOCK_TIMEOUT); exclusive also creates the directories.  A read-only store is
        still locked (flock needs no write access), so DEL can read what it cannot free."""
        if exclusive:
            self.ensure_dirs()
        path = os.path.join(self.dir, LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES):
                raise
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        return Flocked(fd, exclusive, LOCK_TIMEOUT, path, abandoned)

    # --- address files ------------------------------------------------------

    def _ip_path(self, ip) -> str:
        return os.path.join(self.dir, str(ip))

    def is_taken(self, ip) -> bool:
        return os.path.lexists(self._ip_path(ip))

    def holder(self, ip) -> Attachment | None:
        """Who the address file names, or None when the address is free."""
        text = _read_text(self._ip_path(ip))
        if text is None:
            return None
        lines = text.splitlines()
        container_id = lines[0].strip() if lines else ""
        ifname = lines[1].strip() if len(lines) > 1 else ""
        return Attachment(container_id, ifname)

    def reserve(self, ip, attachment: Attachment) -> bool:
        """Create the address file (O_EXCL); False if someone already holds the address."""
        path = self._ip_path(ip)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            return False
        try:
            write_all(fd, f"{attachment.container_id}\r\n{attachment.ifname}".encode())
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return True

    def release(self, ip, attachment: Attachment) -> bool:
        """Delete the address file if it still names attachment; True if it did."""
        if self.holder(ip) != attachment:
            return False
        self.remove_ip_file(ip)
        return True

    def remove_ip_file(self, ip) -> None:
        try:
            os.unlink(self._ip_path(ip))
        except FileNotFoundError:
            pass

    # --- per-attachment index -----------------------------------------------

    def _index_path(self, attachment: Attachment) -> str:
        return os.path.join(self.index_dir, attachment.key)

    def indexed_ips(self, attachment: Attachment) -> list | None:
        """The addresses the index lists for attachment, or None when it has no index."""
        text = _read_text(self._index_path(attachment))
        if text is None:
            return None
        return [ip for ip in map(_parse_ip, text.splitlines()) if ip is not None]

    def write_index(self, attachment: Attachment, ips) -> None:
        write_atomic(self._index_path(attachment), "".join(f"{ip}\n" for ip in ips), mode=FILE_MODE,
                     durable=False)

    def remove_index(self, attachment: Attachment) -> None:
        try:
            os.unlink(self._index_path(attachment))
        except FileNotFoundError:
            return

    # --- round-robin position -----------------------------------------------

    def last_reserved(self, range_set_index: int):
        text = _read_text(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_set_index}"))
        return None if text is None else _parse_ip(text)

    def set_last_reserved(self, range_set_index: int, ip) -> None:
        """Atomic but not durable: the round-robin position is a hint, and a crash that
        loses it only makes the next search start earlier (no address is at risk)."""
        write_atomic(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_set_index}"), str(ip),
                     mode=FILE_MODE, durable=False)

    # --- walking (GC only) --------------------------------------------------

    def indexed_attachments(self) -> list[Attachment]:
        try:
            names = os.listdir(self.index_dir)
        except FileNotFoundError:
            return []
        return [a for a in map(Attachment.from_key, names) if a is not None]

    def ip_files(self) -> list:
        return [ip for ip in map(_parse_ip, os.listdir(self.dir)) if ip is not None]

    def remove_temp_files(self) -> None:
        """Leftovers of atomic writes interrupted by a crash.  Every writer holds the
        exclusive lock, so under it any temporary file is a dead writer's."""
        for directory in (self.dir, self.index_dir):
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            for name in names:
                if is_temp_name(name):
                    try:
                        os.unlink(os.path.join(directory, name))
                    except FileNotFoundError:
                        pass


def usability_problem(store_dir: str) -> OSError | None:
    """Why store_dir cannot be used (or created), without creating anything; None if fine."""
    probe = os.path.abspath(store_dir)
    while not os.path.lexists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    try:
        st = os.stat(probe)
        if not stat.S_ISDIR(st.st_mode):
            return NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), probe)
        if os.statvfs(probe).f_flag & os.ST_RDONLY:
            return OSError(errno.EROFS, os.strerror(errno.EROFS), probe)
    except OSError as exc:
        return exc
    if not os.access(probe, os.W_OK | os.X_OK):
        return PermissionError(errno.EACCES, os.strerror(errno.EACCES), probe)
    return None
