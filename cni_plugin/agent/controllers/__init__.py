"""The agent's controllers, one module each, registered by name.

A module here defines a runtime.Controller subclass decorated with `@register`; all
modules of this package are imported when a network agent starts, so a new
controller (e.g. a policy engine) is one new file here.
"""

from ...catalogue import Catalogue

_CATALOGUE = Catalogue("controller", __name__, __path__)
register = _CATALOGUE.register


def all_controllers() -> list:
    """Every registered controller class, in hook order."""
    return sorted(_CATALOGUE.all(), key=lambda cls: (cls.order, cls.name))
