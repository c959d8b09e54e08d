"""CNI error codes and the one exception type every handler raises.

Codes 1-99 are reserved by the CNI specification; weft only uses the ones
the spec defines there.  Codes >= 100 are weft's own and are documented in
docs/operations.md (Errors, Troubleshooting).
"""

# Codes defined by the CNI specification (SPEC.md, "Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_NETCONF = 7
INVALID_NETNS = 8  # not in SPEC.md's table, but libcni's ErrInvalidNetNS
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_LIMITED = 51

# weft's own codes (>= 100, allowed by the spec for plugin use).
RANGE_EXHAUSTED = 100
ADDRESS_UNAVAILABLE = 101
ATTACHMENT_EXISTS = 102
LINK_CONFLICT = 103
CHECK_FAILED = 104
DELEGATE_FAILED = 105

# Anything unexpected: a bug or an environment we did not foresee.
INTERNAL = 999


class CniError(Exception):
    """An error that is reported to the runtime as CNI error JSON."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"CniError({self.code}, {self.msg!r}, {self.details!r})"
