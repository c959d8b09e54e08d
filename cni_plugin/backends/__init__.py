"""Overlay backends: one module per backend type, registered by name.

A backend module defines a `base.Backend` subclass decorated with `@register`; the
modules of this package are imported on first lookup, so a new backend is one new
file here (plus its tests).  engine.py is the shared desired-vs-actual reconcile.
Nothing here imports pyroute2: kernel access goes through the datapath client the
agent passes in, so every backend's planning runs in unit tests without root.
"""

from ..catalogue import Catalogue

_CATALOGUE = Catalogue("backend", __name__, __path__, shared=("base", "engine"))
register = _CATALOGUE.register
names = _CATALOGUE.names
get = _CATALOGUE.get
