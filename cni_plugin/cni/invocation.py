"""One CNI invocation of weft or weft-ipam, wherever it runs (executable or agent).

run() dispatches and writes the plugin's log line; the standalone executables and
weftd's socket server both reach it through roles.invoke, so both paths have exactly
the same semantics.  The call's Context (current()) tells handlers which path serves
them and collects the per-step timings that the log line carries at logLevel debug.
"""

import contextvars
import json
import time

LOG_LEVELS = ("info", "debug")


def _never(network: str) -> bool:
    return False


def _nothing(network: str, ips, namespace, name) -> None:
    return None


def _nobody(network: str, ips) -> None:
    return None


class Context:
    """via: "agent" or "standalone"; agent_masquerades(network) -> True when the serving
    agent owns that network's masquerade table; agent_attaching(network, ips, pod
    namespace, pod name): the serving agent's policy fast path, called by ADD before the
    pod's interface exists (raises to refuse the ADD); netns_fd: the pod's network
    namespace as weft's forwarder opened it and handed it to the serving agent (None:
    CNI_NETNS's path is opened; whoever received it closes it after the call); teardown: the
    serving agent's background teardown queue (agent/teardown_queue.py; None: DEL tears
    down synchronously); agent_detaching(network, ips): the addresses leave the serving
    agent's policy sets (a teardown, before they are released); bridges: the serving agent's
    datapath/bridge_facts.BridgeFacts (None: every ADD checks its bridge); steps: [(step, ms)] in order,
    recorded by lap() (a plain class: dataclasses would cost the standalone executables
    an import)."""

    def __init__(self, via: str = "standalone", agent_masquerades=None, agent_attaching=None, netns_fd=None,
                 teardown=None, agent_detaching=None, bridges=None):
        self.via = via
        self.bridges = bridges
        self.netns_fd = netns_fd
        self.teardown = teardown
        self.agent_detaching = agent_detaching or _nobody
        self.agent_masquerades = agent_masquerades or _never
        self.agent_attaching = agent_attaching or _nothing
        self.steps = []
        self._mark = time.monotonic()

    def lap(self, name: str) -> None:
        """Record the time since the previous lap (or the call's start) as step `name`."""
        now = time.monotonic()
        self.steps.append((name, round((now - self._mark) * 1000, 2)))
        self._mark = now


_CURRENT = contextvars.ContextVar("weft_invocation")


def current() -> Context:
    """The running call's context (a fresh standalone one outside run())."""
    try:
        return _CURRENT.get()
    except LookupError:
        return Context()


def within(context: Context, work, *args):
    """work(*args) with `context` as the current call's (the agent's background teardown)."""
    token = _CURRENT.set(context)
    try:
        return work(*args)
    finally:
        _CURRENT.reset(token)


def _log_settings(stdin: bytes, default: str) -> tuple:
    try:
        conf = json.loads(stdin)
    except (ValueError, RecursionError):
        return default, "info"
    if not isinstance(conf, dict):
        return default, "info"
    target = conf.get("logFile", default)
    level = conf.get("logLevel", "info")
    # a relative logFile is refused by the handler (code 7); never write beside the cwd
    target = target if isinstance(target, str) and target.startswith("/") else default
    return target, (level if level in LOG_LEVELS else "info")


def run(handlers: dict, environ, stdin: bytes, via: str = "standalone", log_file: str = None,
        agent_masquerades=None, agent_attaching=None, netns_fd=None, teardown=None, agent_detaching=None,
        bridges=None) -> tuple:
    """(stdout bytes, exit code) for one invocation.  log_file: the log's default path
    (netconf `logFile` overrides it); None: the call is not logged."""
    from . import log
    from .dispatch import dispatch

    started = time.monotonic()
    context = Context(via, agent_masquerades, agent_attaching, netns_fd, teardown, agent_detaching, bridges)
    token = _CURRENT.set(context)
    try:
        out, code = dispatch(handlers, environ, stdin)
    finally:
        _CURRENT.reset(token)
    command = environ.get("CNI_COMMAND", "")
    if log_file is not None and command != "VERSION":
        entry = {"command": command, "containerID": environ.get("CNI_CONTAINERID", ""),
                 "ifname": environ.get("CNI_IFNAME", ""), "exit": code, "via": via,
                 "ms": round((time.monotonic() - started) * 1000, 1)}
        target, level = _log_settings(stdin, log_file)
        if level == "debug" and context.steps:
            entry["steps"] = dict(context.steps)
        if code:
            try:
                entry["error"] = json.loads(out)
            except ValueError:
                pass
        log.record(target, entry)
    return out, code
