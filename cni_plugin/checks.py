"""Type and range checks of decoded JSON values, shared by every parser of weft's input.

Standard library only and importing nothing of weft, so any layer (cni/, plugin/,
subnet/, backends/, policy/, cli/) may use it without bending the layering rules.

The rule these exist for: Python's bool is a subclass of int, so `isinstance(True, int)`
holds and a configuration saying `"mtu": true` would pass an integer check as 1.  JSON
keeps the two apart, and so does weft: a bool is a bool, never an int nor a number.
The callers keep their own error types and messages; these only answer yes or no.
"""

MTU_MIN, MTU_MAX = 68, 65535   # IPv4's minimum link MTU; the largest an IP packet can be
PORT_MIN, PORT_MAX = 1, 65535  # a TCP/UDP/SCTP port number (0 is not a port one can name)


def is_int(value) -> bool:
    """An integer, and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_a(value, kind) -> bool:
    """isinstance(value, kind) where a bool counts only when bool itself is asked for:
    is_a(True, int) and is_a(True, (int, float)) are False, is_a(True, bool) is True."""
    if isinstance(value, bool):
        return any(k is bool for k in (kind if isinstance(kind, tuple) else (kind,)))
    return isinstance(value, kind)


def int_in(value, low: int, high: int = None) -> bool:
    """An integer (not a bool) from low to high, both included; high None: no upper bound."""
    return is_int(value) and low <= value and (high is None or value <= high)


def is_port(value) -> bool:
    """A port number: an integer from 1 to 65535."""
    return int_in(value, PORT_MIN, PORT_MAX)


def is_mtu(value) -> bool:
    """A link MTU weft accepts: an integer from 68 to 65535."""
    return int_in(value, MTU_MIN, MTU_MAX)
