"""Which handlers serve which CNI executable: the one place that knows both plugins.

`weft` and `weft-ipam` are both answered by cni.dispatch; the forwarder's standalone
mode and weftd's socket server look the handlers up here (imported lazily: the
plugin's table pulls in the datapath).
"""

from . import paths
from .cni.wire import ROLES


def handlers_for(role: str) -> dict:
    if role == "weft":
        from .plugin.commands import HANDLERS
    elif role == "weft-ipam":
        from .ipam.handlers import HANDLERS
    else:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return HANDLERS


def invoke(role: str, environ, stdin: bytes, via: str = "standalone", agent_masquerades=None,
           agent_attaching=None, netns_fd=None, teardown=None, agent_detaching=None, bridges=None) -> tuple:
    """(stdout, exit code) of one call of `role`; weft's calls are logged.
    agent_masquerades(network) -> bool: the serving agent owns that network's table;
    netns_fd: CNI_NETNS as the forwarder opened it (the caller keeps and closes it);
    bridges: the serving agent's bridge facts (datapath/bridge_facts.py)."""
    from .cni.invocation import run

    # VERSION needs no handler: the plugin's table (and the datapath behind it) stays unloaded
    handlers = {} if environ.get("CNI_COMMAND") == "VERSION" else handlers_for(role)
    return run(handlers, environ, stdin, via, paths.LOG_FILE if role == "weft" else None,
               agent_masquerades, agent_attaching, netns_fd, teardown, agent_detaching, bridges)
