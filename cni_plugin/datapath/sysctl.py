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
        with open(path) as handle:
            if handle.read().strip() == "1":
                continue
        _write(path, "1")


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
