"""Names of the links weft creates (stdlib only: GC and DEL derive them, no state)."""

from ..digest import sha256

HOST_VETH_PREFIX = "wft"
RETIRED_VETH_PREFIX = "wfx"  # a host veth cut off by DEL, waiting for its teardown (plugin/teardown.py)


def host_veth_name(container_id: str, ifname: str) -> str:
    """wft + 12 hex digits of sha256(containerID/ifname): stable, 15 chars, unique enough."""
    digest = sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return HOST_VETH_PREFIX + digest[:12]


def retired_name(host_veth: str) -> str:
    """The name a host veth takes when DEL cuts it off (same digest, its own prefix:
    GC's sweep of wft links never sees it, and the wft name is free at once)."""
    return RETIRED_VETH_PREFIX + host_veth[len(HOST_VETH_PREFIX):]
