"""The flow journal: `<dir>/<network>.jsonl`, one JSON line per record, rotated beside it.

Bounds (weftd flags, docs/flows.md): a file is rotated to `<network>.jsonl.1` (the older
ones shifting to .2 ...) when it reaches max_bytes or is older than max_age seconds;
at most `keep` rotated files stay, and a rotated file older than keep x max_age goes.
The directory is made 0700 and files 0600 (records name workloads; they are never in a
pod's reach).  write() never raises: a record that cannot be written (full disk,
read-only directory) is dropped and counted by reason, and the next write tries again.
Only the agent's flow writer thread writes.
"""

import errno
import json
import os
import time

REASONS = {errno.ENOSPC: "disk-full", errno.EDQUOT: "disk-full", errno.EROFS: "read-only",
           errno.EACCES: "read-only", errno.EPERM: "read-only"}


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)  # made once: dumps() makes one a call


def encode(record: dict) -> bytes:
    """One JSON line; every string JSON-escaped (control characters and non-ASCII as
    \\u escapes), so a hostile name is data, never structure."""
    return (_ENCODER.encode(record) + "\n").encode("ascii")


def path(directory: str, network: str) -> str:
    return os.path.join(directory, f"{network}.jsonl")


class FlowJournal:
    def __init__(self, directory: str, network: str, max_bytes: int, max_age: float, keep: int,
                 on_drop=None, clock=time.time):
        self.directory, self.network = directory, network
        self.path = path(directory, network)
        self.max_bytes, self.max_age, self.keep = max_bytes, max_age, keep
        self.on_drop = on_drop or (lambda reason, count: None)
        self.clock = clock
        self.fd = None
        self.size = 0
        self.opened_at = 0.0
        self.written = 0
        self.last_error = None

    def _open(self):
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        info = os.fstat(fd)
        if info.st_mode & 0o077:
            os.fchmod(fd, 0o600)
        self.fd, self.size = fd, info.st_size
        # a file carried over from a previous run: aged from its change time
        self.opened_at = info.st_ctime if info.st_size else self.clock()

    def _rotate(self):
        self.close()
        for index in range(self.keep, 0, -1):
            older = f"{self.path}.{index}"
            if index == self.keep:
                _remove(older)
            else:
                _rename(older, f"{self.path}.{index + 1}")
        if self.keep:
            _rename(self.path, f"{self.path}.1")
        else:
            _remove(self.path)
        limit = self.clock() - self.keep * self.max_age
        for index in range(1, self.keep + 1):
            name = f"{self.path}.{index}"
            try:
                if os.stat(name).st_mtime < limit:
                    _remove(name)
            except OSError:
                pass

    def write(self, records: list) -> int:
        """Append records; returns how many were written (the rest counted as dropped)."""
        if not records:
            return 0
        data = b"".join(encode(r) for r in records)
        try:
            if self.fd is None:
                self._open()
            if self.size and (self.size + len(data) > self.max_bytes or
                              self.clock() - self.opened_at > self.max_age):
                self._rotate()
                self._open()
            view = memoryview(data)
            start = self.size
            try:
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError:
                try:
                    os.ftruncate(self.fd, start)  # no torn line in front of the next record
                except OSError:
                    pass
                raise
            self.size += len(data)
            self.written += len(records)
            self.last_error = None
            return len(records)
        except OSError as exc:
            self.close()
            self.last_error = f"{self.path}: {exc.strerror or exc}"
            self.on_drop(REASONS.get(exc.errno, "write-error"), len(records))
            return 0

    def close(self):
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None


def _remove(name):
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


def _rename(old, new):
    try:
        os.replace(old, new)
    except FileNotFoundError:
        pass
