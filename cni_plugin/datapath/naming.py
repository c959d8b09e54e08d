"""Names of the links weft creates (stdlib only: GC and DEL derive them, no state)."""

import hashlib

HOST_VETH_PREFIX = "wft"


def host_veth_name(container_id: str, ifname: str) -> str:
    """wft + 12 hex digits of sha256(containerID/ifname): stable, 15 chars, unique enough."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return HOST_VETH_PREFIX + digest[:12]
