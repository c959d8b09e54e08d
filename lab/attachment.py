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


def teardowns_pending(plugin_data_dir: str) -> list:
    """Host veths whose DEL's background teardown (weftd) has not finished: the records
    under <dataDir>/teardown (cni_plugin/plugin/teardown.py)."""
    directory = os.path.join(plugin_data_dir, "teardown")
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def wait_torn_down(plugin_data_dir: str, timeout: float = 30.0) -> float:
    """Wait (bounded) until every DEL served by weftd is torn down; the seconds it took."""
    import time

    started = time.monotonic()
    while teardowns_pending(plugin_data_dir):
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"teardown records left in {plugin_data_dir}/teardown after {timeout}s: "
                               f"{teardowns_pending(plugin_data_dir)}")
        time.sleep(0.05)
    return round(time.monotonic() - started, 2)
