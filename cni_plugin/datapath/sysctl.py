"""Per-interface sysctls in the plugin's own namespace."""

import os


def set_interface(family: str, ifname: str, key: str, value: str) -> bool:
    """Write /proc/sys/net/<family>/conf/<ifname>/<key>; False if the knob is absent
    (e.g. IPv6 disabled)."""
    path = f"/proc/sys/net/{family}/conf/{ifname}/{key}"
    try:
        with open(path, "w") as handle:
            handle.write(value)
        return True
    except FileNotFoundError:
        return False


def read_interface(family: str, ifname: str, key: str):
    try:
        with open(f"/proc/sys/net/{family}/conf/{ifname}/{key}") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return None


def enable_forwarding(versions) -> None:
    """Turn on forwarding for the IP versions in use (the bridge is the pods' gateway)."""
    paths = {4: "/proc/sys/net/ipv4/ip_forward", 6: "/proc/sys/net/ipv6/conf/all/forwarding"}
    for version in versions:
        path = paths[version]
        if not os.path.exists(path):
            continue
        with open(path) as handle:
            if handle.read().strip() == "1":
                continue
        with open(path, "w") as handle:
            handle.write("1")
