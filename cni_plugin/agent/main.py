"""weftd's entry point: flags, one NetworkAgent per --network, metrics, signals.

SIGTERM/SIGINT stop the agent and leave the datapath and the leases in place, so
pods keep talking across a restart and the restarted agent finds its lease again.
SIGHUP rotates the node's key on every network whose backend has one (wireguard):
new key in the state dir, on the device, then in the lease, which peers watch.
"""

import signal
import sys
import threading

from .. import paths
from . import logs, metrics as metrics_mod, options as options_mod

STOP_POLL = 30.0
EXIT_NODE_COLLISION = 3  # another agent identity holds this --node-name (see lease_manager)


def main(argv=None) -> int:
    args = options_mod.parse(argv)
    log = logs.setup(args.log_level)
    from .. import etcd_flags
    from ..subnet.registry import RegistryError
    from .cni_server import CniServer
    from .heap import HeapSettler
    from .network import NetworkAgent
    from .teardown_queue import TeardownQueue
    from .node import NodeError, NodeIdentity

    try:
        node = NodeIdentity.discover(args)
    except NodeError as exc:
        log.error(str(exc), extra={"node": args.node_name})
        return 2
    try:
        registry = etcd_flags.registry(args)
    except RegistryError as exc:  # bad flags (e.g. unreadable cert); reachability is retried
        log.error(str(exc), extra={"node": node.name})
        return 2
    metrics = metrics_mod.Metrics()
    agents = [NetworkAgent(name, registry, args, node, metrics, log)
              for name in args.networks]

    def health():
        dead = [a.name for a in agents if not a.thread.is_alive()]
        return (not dead, "ok" if not dead else f"network threads stopped: {', '.join(dead)}")

    def readiness():
        waiting = [f"{a.name}: {a.reason}" for a in agents if not a.ready]
        return (not waiting, "ready" if not waiting else "\n".join(waiting))

    try:
        server = metrics_mod.serve(args.metrics_host, args.metrics_port, metrics, health, readiness)
    except OSError as exc:
        log.error(f"cannot serve metrics on {args.metrics_addr}: {exc.strerror}", extra={"node": node.name})
        return 2
    by_name = {a.name: a for a in agents}

    def masquerades(network: str) -> bool:
        agent = by_name.get(network)
        return agent is not None and agent.masquerade_installed

    def attaching(network: str, ips, namespace, name) -> None:
        agent = by_name.get(network)
        if agent is not None:
            agent.attaching(ips, namespace, name)

    def detaching(network: str, ips) -> None:
        agent = by_name.get(network)
        if agent is not None:
            agent.detaching(ips)

    # the teardown yields to the calls the server is serving (cni is bound below)
    teardown = TeardownQueue(args.state_dir, log, detaching, masquerades, calls_in_flight=lambda: cni.in_flight,
                             last_call=lambda: cni.last_call, metrics=metrics)
    cni = CniServer(paths.agent_socket(args.run_dir), log, metrics, masquerades, attaching, teardown, detaching,
                    _bridge_facts(log, node.name))
    try:
        cni.start()
    except OSError as exc:
        log.error(f"cannot listen on {cni.path}: {exc.strerror}", extra={"node": node.name})
        server.shutdown()
        return 2
    stop = threading.Event()
    for agent in agents:
        agent.on_fatal = stop.set
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: [agent.command("rotate-key") for agent in agents])
    log.info(f"weftd started: networks {', '.join(args.networks)}, public IP {node.underlay_text}",
             extra={"node": node.name})
    for agent in agents:
        agent.start()
    teardown.start()  # after the networks: a recovered teardown's addresses leave their policy sets
    heap = HeapSettler(args.resync_interval)
    # the signal handlers run in this thread: Linux hands a process's signal to its main
    # thread first, and the wait is interrupted for them; the timeout is a backstop only
    while not stop.wait(min(STOP_POLL, heap.tick(all(a.programmed for a in agents)))):
        pass
    log.info("weftd stopping; datapath and leases stay in place", extra={"node": node.name})
    cni.stop()  # finish calls in flight, then the running teardown (the rest waits on disk), then the networks
    teardown.stop()
    for agent in agents:
        agent.stop()
    server.shutdown()
    registry.close()
    fatal = [a.fatal for a in agents if a.fatal]
    if fatal:
        log.error(f"weftd exits: {fatal[0]}", extra={"node": node.name})
        return EXIT_NODE_COLLISION
    return 0


def _bridge_facts(log, node: str):
    """The ADDs' bridge facts (datapath/bridge_facts.py), joined to this namespace's link
    notifications before the first ADD; None (every ADD checks) if the socket fails."""
    from ..datapath.bridge_facts import BridgeFacts

    try:
        return BridgeFacts()
    except OSError as exc:
        log.warning(f"link notifications unavailable ({exc.strerror}): every ADD checks its bridge",
                    extra={"node": node})
        return None


if __name__ == "__main__":
    sys.exit(main())
