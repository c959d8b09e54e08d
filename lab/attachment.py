"""What weft derives from an attachment, computed the way a test checks it: the host
veth name, and holding its lock as another call would."""

import fcntl
import hashlib
import os
from contextlib import contextmanager


def host_veth(cid: str, ifname: str = "eth0") -> str:
    """wft + 12 hex digits of sha256("<containerID>/<ifname>") (README, DEL)."""
    return "wft" + hashlib.sha256(f"{cid}/{ifname}".encode()).hexdigest()[:12]


def lock_file(plugin_data_dir: str, cid: str, ifname: str = "eth0") -> str:
    return os.path.join(plugin_data_dir, "locks", host_veth(cid, ifname))


@contextmanager
def holding(path: str):
    """Hold an attachment's flock (as a call on it would) until the block ends."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
