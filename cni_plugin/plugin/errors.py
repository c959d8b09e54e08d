"""The one place where the datapath's errors become CNI error codes."""

import functools

from ..cni.errors import CHECK_FAILED, INVALID_NETNS, IO_FAILURE, LINK_CONFLICT, CniError
from ..datapath.errors import DatapathError, DriftFound, LinkConflict, NetnsError

_CODES = ((LinkConflict, LINK_CONFLICT), (NetnsError, INVALID_NETNS), (DriftFound, CHECK_FAILED),
          (DatapathError, IO_FAILURE))


def as_cni_error(exc: Exception):
    """exc as the CniError the runtime sees (datapath errors by class), or None when
    it is neither (a bug)."""
    if isinstance(exc, CniError):
        return exc
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return CniError(code, str(exc))
    return None


def speaks_cni(handler):
    """Decorate a command handler: datapath errors leave it as CNI errors."""
    @functools.wraps(handler)
    def wrapped(env, conf):
        try:
            return handler(env, conf)
        except DatapathError as exc:
            raise as_cni_error(exc) from exc  # a DatapathError always maps
    return wrapped
