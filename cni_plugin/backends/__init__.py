"""Overlay backends: one module per backend type, registered by name.

A backend module defines a `base.Backend` subclass decorated with `@register`; the
modules of this package are imported on first lookup, so a new backend is one new
file here (plus its tests).  engine.py is the shared desired-vs-actual reconcile.
Nothing here imports pyroute2: kernel access goes through the datapath client the
agent passes in, so every backend's planning runs in unit tests without root.
"""

from ..catalogue import Catalogue
from .base import FDB, NEIGH, ROUTE

_CATALOGUE = Catalogue("backend", __name__, __path__, shared=("base", "engine"))


def register(cls):
    """Class decorator: a backend under its name, once it has said which of its entries
    the kernel notifies about (base.py: NOTIFIED_KINDS; the others are read every pass)."""
    notified = cls.NOTIFIED_KINDS
    if not isinstance(notified, frozenset):
        raise TypeError(f"backend {cls.name!r} must declare NOTIFIED_KINDS (a frozenset of the kinds of "
                        "its entries the kernel sends change notifications for)")
    unknown = notified - {ROUTE, NEIGH, FDB}
    if unknown:
        raise TypeError(f"backend {cls.name!r}: NOTIFIED_KINDS names {sorted(unknown)}, but change "
                        "notifications cover routes, neighbours and FDB entries only")
    return _CATALOGUE.register(cls)


names = _CATALOGUE.names
get = _CATALOGUE.get
