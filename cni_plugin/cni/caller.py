"""Is anyone still waiting for this call?  (weftd's answer, per call; built-ins only.)

A standalone executable's caller is the runtime that started the process: if it goes,
the process dies with it, so there is nothing to ask.  In weftd the call runs in a
worker thread while the `weft` executable waits on the socket; if that process is
killed, or gives up at its deadline, the connection closes and the call must not go
on to commit.  cni_server installs a probe for the worker's thread; the handlers ask
`gone()` before they commit (and while they wait for locks) and roll back when true.
"""

import _thread  # threading.local is _thread._local; `threading` costs a standalone call ~1.5 ms

from .errors import TRY_AGAIN_LATER, CniError

_local = _thread._local()


class CallerLeft(CniError):
    """The caller went away: the call was abandoned and what it made was undone."""

    def __init__(self, what: str):
        super().__init__(TRY_AGAIN_LATER, f"the caller went away {what}; weft abandoned the call "
                         "and undid its changes, so retrying is safe")


def set_probe(probe) -> None:
    """probe(): True once the caller is gone; None: a standalone call (never gone)."""
    _local.probe = probe


def gone() -> bool:
    probe = getattr(_local, "probe", None)
    return bool(probe is not None and probe())


def check(what: str) -> None:
    if gone():
        raise CallerLeft(what)
