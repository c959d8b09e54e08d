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
                       "writable /proc/sys (in a container: see weftd-container in docs/operations.md)")


def turn_on(path: str) -> bool:
    """Set a 0/1 knob to 1, written only when it is not 1 already; False if the knob is
    absent (its module not loaded, or IPv6 disabled)."""
    try:
        with open(path) as handle:
            if handle.read().strip() == "1":
                return True
    except FileNotFoundError:
        return False
    return _write(path, "1")


def read_int(path: str):
    """A knob's integer value; None when it is absent or unreadable."""
    try:
        with open(path, "rb") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def set_interface(family: str, ifname: str, key: str, value: str) -> bool:
    """Write /proc/sys/net/<family>/conf/<ifname>/<key>."""
    return _write(f"/proc/sys/net/{family}/conf/{ifname}/{key}", value)


def enable_forwarding(versions) -> None:
    """Turn on forwarding for the IP versions in use (the bridge is the pods' gateway)."""
    paths = {4: "/proc/sys/net/ipv4/ip_forward", 6: "/proc/sys/net/ipv6/conf/all/forwarding"}
    for version in versions:
        turn_on(paths[version])


BRIDGE_NF = {4: "/proc/sys/net/bridge/bridge-nf-call-iptables",
             6: "/proc/sys/net/bridge/bridge-nf-call-ip6tables"}


def enable_bridge_netfilter() -> None:
    """Send bridged IPv4/IPv6 frames through the inet hooks (per network namespace since
    Linux 5.3), so pods on one bridge meet the same forward-hook rules as routed
    traffic.  DatapathError with the fix when br_netfilter is not loaded."""
    import os

    if not os.path.isdir("/proc/sys/net/bridge"):
        raise DatapathError("br_netfilter is not loaded (no /proc/sys/net/bridge): traffic between pods "
                            "of one node would bypass NetworkPolicy; run `modprobe br_netfilter` and "
                            "add it to /etc/modules-load.d/")
    for path in BRIDGE_NF.values():
        if not turn_on(path):
            raise DatapathError(f"{path} is missing although br_netfilter is loaded")


def keep_accepting_ra(ifname: str) -> bool:
    """With IPv6 forwarding on, the kernel ignores router advertisements on an interface
    whose accept_ra is 1 (its default): a node whose underlay address or default route
    comes from RAs would lose them when they expire.  Set accept_ra to 2 (accept even
    when forwarding) on `ifname` when it is 1 and forwarding is on; True when changed.
    0 (the operator configured the interface statically) and 2 are left as they are."""
    try:
        with open("/proc/sys/net/ipv6/conf/all/forwarding") as handle:
            forwarding = handle.read().strip() == "1"
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/accept_ra") as handle:
            accept_ra = handle.read().strip()
    except FileNotFoundError:
        return False
    if not forwarding or accept_ra != "1":
        return False
    return set_interface("ipv6", ifname, "accept_ra", "2")
