"""MAC addresses weft makes up (stdlib only)."""

import os


def random_mac() -> str:
    """A random unicast, locally administered MAC."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)
