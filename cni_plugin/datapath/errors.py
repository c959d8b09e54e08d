"""The datapath's one error vocabulary (stdlib only).

Kernel code raises these and nothing else; CNI error codes are the plugin's business
(plugin/errors.py maps each class to its code), the agent logs them as they are.
"""

import os


class DatapathError(Exception):
    """Kernel state could not be read or changed; the message names the object."""


class NetlinkError(DatapathError):
    """The kernel refused a netlink request; .code is the errno."""

    def __init__(self, code: int, what: str):
        super().__init__(f"{what}: {os.strerror(code)}")
        self.code = code
        self.strerror = os.strerror(code)


class LinkConflict(DatapathError):
    """A link of the wanted name exists and is not what weft would make there."""


class NetnsError(DatapathError):
    """A namespace path that cannot be used (missing, not a netns, the caller's own)."""


class DriftFound(DatapathError):
    """CHECK: the kernel no longer holds what ADD put there."""


class NftError(DatapathError):
    """nftables refused a change or could not be read."""
