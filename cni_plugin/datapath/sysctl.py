"""Sysctls in the plugin's own (the node's) namespace."""

from .errors import DatapathError


def _write(path: str, value: str) -> bool:
    """False if the knob is absent (e.g. IPv6 disabled); a read-only or forbidden
    /proc/sys is an error that says how to fix it."""
    try:
        with open(path, "w") as handle:
            handle.write(value)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise DatapathError(f"cannot set {path} to {value}: {exc.strerror}; weft needs a "
                       "writable /proc/sys (in a container: see weftd-container in the README)")


def set_interface(family: str, ifname: str, key: str, value: str) -> bool:
    """Write /proc/sys/net/<family>/conf/<ifname>/<key>."""
    return _write(f"/proc/sys/net/{family}/conf/{ifname}/{key}", value)


def enable_forwarding(versions) -> None:
    """Turn on forwarding for the IP versions in use (the bridge is the pods' gateway)."""
    paths = {4: "/proc/sys/net/ipv4/ip_forward", 6: "/proc/sys/net/ipv6/conf/all/forwarding"}
    for version in versions:
        try:
            with open(paths[version]) as handle:
                if handle.read().strip() == "1":
                    continue
        except FileNotFoundError:
            continue
        _write(paths[version], "1")
