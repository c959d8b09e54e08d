"""Opening network namespaces safely."""

import errno
import fcntl
import os
import stat

from .constants import CLONE_NEWNET
from .errors import NetnsError

_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which kind of namespace
# O_NONBLOCK: opening a FIFO (or a device that waits for a peer) must not block the call;
# an nsfs file ignores the flag.  No O_NOFOLLOW: /proc/<pid>/ns/net is itself a symlink.
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class PodNetns:
    """The pod's network namespace as one call names it.

    path: CNI_NETNS as the runtime gave it; every message names it and the result's
    sandbox keeps it.  fd: the namespace as weft's forwarder opened it and handed it to
    weftd (cni/wire.py), or None: the path is opened here.  The descriptor belongs to
    whoever received it; nothing here closes it.  `ref` is what the netlink code opens
    (datapath/rtnl.py namespace_fd: a path, or a descriptor it duplicates)."""

    __slots__ = ("path", "fd")

    def __init__(self, path: str, fd: int = None):
        self.path = path
        self.fd = fd

    @property
    def ref(self):
        return self.path if self.fd is None else self.fd


def check_container_netns(netns: PodNetns) -> None:
    """The pod's namespace must be a network namespace other than the one the plugin
    runs in; a descriptor handed over is checked itself, never its path."""
    if netns.fd is not None:
        _check(netns.fd, netns.path)
        return
    try:
        fd = os.open(netns.path, OPEN_FLAGS)
    except OSError as exc:
        raise NetnsError(f"CNI_NETNS {netns.path} cannot be opened: {exc.strerror}")
    try:
        _check(fd, netns.path)
    finally:
        os.close(fd)


def _check(fd: int, path: str) -> None:
    target = os.fstat(fd)
    if not stat.S_ISREG(target.st_mode):  # nsfs files are regular: no ioctl on a FIFO or device
        raise NetnsError(_not_a_namespace(path))
    try:
        kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            raise NetnsError(_not_a_namespace(path))
        raise NetnsError(f"CNI_NETNS {path} cannot be inspected: {exc.strerror}")
    if kind != CLONE_NEWNET:
        raise NetnsError(f"CNI_NETNS {path} is a namespace but not a network namespace")
    own = os.stat("/proc/thread-self/ns/net")
    if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
        raise NetnsError(f"CNI_NETNS {path} is the plugin's own network namespace; "
                         "refusing to configure the host as a container")


def _not_a_namespace(path: str) -> str:
    return (f"CNI_NETNS {path} is not a namespace (expected a bind-mounted /proc/<pid>/ns/net, "
            "e.g. /run/netns/<name>)")


def netns_exists(netns: PodNetns) -> bool:
    if netns.fd is not None:
        return _is_netns(netns.fd)
    try:
        fd = os.open(netns.path, OPEN_FLAGS)
    except OSError:
        return False
    try:
        return _is_netns(fd)
    finally:
        os.close(fd)


def _is_netns(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and fcntl.ioctl(fd, _NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False


def open_container(netns: PodNetns):
    """A netlink client for the pod's namespace (the hot path: datapath.rtnl)."""
    from .rtnl import Rtnl

    try:
        return Rtnl(netns.ref)
    except OSError as exc:
        raise NetnsError(f"CNI_NETNS {netns.path} cannot be entered: {exc.strerror}")


def open_node():
    """A netlink client for this (the node's) namespace, for the per-pod path."""
    from .rtnl import Rtnl

    return Rtnl()
