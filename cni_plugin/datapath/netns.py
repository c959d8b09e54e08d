"""Opening network namespaces safely."""

import errno
import fcntl
import os

from .constants import CLONE_NEWNET
from .errors import NetnsError

_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which kind of namespace
# O_NONBLOCK: opening a FIFO (or a device that waits for a peer) must not block the call;
# an nsfs file ignores the flag.  No O_NOFOLLOW: /proc/<pid>/ns/net is itself a symlink.
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


def check_container_netns(path: str) -> None:
    """path must be a network namespace other than the one the plugin runs in."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as exc:
        raise NetnsError(f"CNI_NETNS {path} cannot be opened: {exc.strerror}")
    try:
        try:
            kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EINVAL):
                raise NetnsError(f"CNI_NETNS {path} is not a namespace (expected a "
                               "bind-mounted /proc/<pid>/ns/net, e.g. /run/netns/<name>)")
            raise NetnsError(f"CNI_NETNS {path} cannot be inspected: {exc.strerror}")
        if kind != CLONE_NEWNET:
            raise NetnsError(f"CNI_NETNS {path} is a namespace but not a network namespace")
        target = os.fstat(fd)
    finally:
        os.close(fd)
    own = os.stat("/proc/thread-self/ns/net")
    if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
        raise NetnsError(f"CNI_NETNS {path} is the plugin's own network namespace; "
                       "refusing to configure the host as a container")


def netns_exists(path: str) -> bool:
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def open_container(path: str):
    """A netlink client for the pod's namespace (the hot path: datapath.rtnl)."""
    from .rtnl import Rtnl

    try:
        return Rtnl(path)
    except OSError as exc:
        raise NetnsError(f"CNI_NETNS {path} cannot be entered: {exc.strerror}")


def open_node():
    """A netlink client for this (the node's) namespace, for the per-pod path."""
    from .rtnl import Rtnl

    return Rtnl()

