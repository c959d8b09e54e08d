"""The control-guard controller: pods may not reach etcd or weftd (datapath/control_guard.py).

Whatever NetworkPolicy says, the node's table `inet weft_control_<network>` drops
traffic from the network's pods to every etcd endpoint this agent is configured with
(each member, each address its host name resolves to, both families), to weftd's own
listening ports on this node (metrics, the backend's UDP port), and to those ports on
the network's other nodes (a pod's datagram to another node's VXLAN port would
otherwise carry frames with any inner source into the overlay).  The network
config's `ControlPlaneAccess` (["namespace/name", "namespace/*"]) names pods let
through; they are found among this node's pods through the port records the plugin
writes per attachment (guard/ports.py).

The table is created once the lease is held and compared with the kernel at every
reconcile interval and while etcd is away.  A pass lists it only when nftables'
change notifications say something touched it, when the wanted table changed (peers,
config, pods named in ControlPlaneAccess), or when the read schedule says so
(agent/read_schedule.py: at least every --resync-interval, whatever the
notifications said).  A deleted table, rule or element comes back and
counts as drift.  Every pass reads the knocked sets (the flows the packet path
recorded, a small listing); new flows become journal records (denial_journal, kind
"control-plane") and log lines, each flow once while it stays recorded.  Only while
they hold flows is the table's counter read into weft_control_plane_refused_total (a
counter listing makes libnftables read the whole ruleset).  The table goes with the network config
(deleted from etcd); SIGTERM leaves it in place.
"""

import ipaddress
import os
import socket
import threading
import time
from datetime import timedelta
from urllib.parse import urlsplit

from ... import etcd_flags
from ...datapath import control_guard
from ...datapath.changes import TableChanges
from ...datapath.errors import DatapathError
from ...guard import ports as port_records
from ...subnet.registry import RegistryError
from ...timestamps import format_ts, now
from .. import denial_journal
from ..read_schedule import for_controller
from ..runtime import Controller
from . import register

FULL_READ_EVERY = 30   # passes between two resolutions of the etcd endpoints' names
QUIET_GAP = control_guard.KNOCKED_TIMEOUT - 10  # seconds between passes within which empty sets mean no refusal
ARRIVING_GRACE = 30.0  # seconds a named pod's addresses are let through before its port record shows
ETCD_DEFAULT_PORT = 2379


def etcd_targets(urls) -> tuple:
    """([(host, port)], [problem]) of etcd client URLs (http/https only)."""
    targets, problems = [], []
    for url in urls:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        try:
            port = parts.port or ETCD_DEFAULT_PORT
        except ValueError:
            problems.append(f"etcd endpoint {url!r} has no usable port")
            continue
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"etcd endpoint {url!r} is not an http(s) URL: not guarded")
            continue
        targets.append((parts.hostname, port))
    return targets, problems


def resolve(host: str, port: int) -> list:
    """[(ip_address, port)] of host (an address, or a name looked up for both families)."""
    try:
        return [(ipaddress.ip_address(host), port)]
    except ValueError:
        pass
    answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({(ipaddress.ip_address(a[4][0].split("%")[0]), port) for a in answers},
                  key=lambda e: (e[0].version, e[0]))


def matches(entries, namespace, name) -> bool:
    """Whether ControlPlaneAccess `entries` name the pod namespace/name."""
    if not namespace or not name:
        return False
    return f"{namespace}/{name}" in entries or f"{namespace}/*" in entries


@register
class ControlGuardController(Controller):
    name = "control-guard"
    order = 27  # after the overlay (agent.peers) and masquerade

    def __init__(self, agent):
        super().__init__(agent)
        self.state = None        # "installed", "absent" (network gone), "failed: ..."
        self.last_check = None
        self.drift_repaired = 0
        self.refused = 0         # packets refused since this agent started
        self.flows = 0           # refused flows journalled since this agent started
        self.counted = None      # the table's counter at the last reading (None: not read yet)
        self.seen = {}           # flow -> monotonic time its knocked element expires
        self.last_harvest = None  # monotonic time of the last reading of the knocked sets
        self.passes = 0
        self.watched = False
        self.watched_text = None
        self.schedule = None       # when a pass lists the table (agent/read_schedule.py)
        self.ensured = None      # the spec the kernel table last matched
        # inputs of the spec, recomputed only when they may have changed
        self.endpoints = {}      # (host, port) -> [(ip_address, port)] (the last good answer)
        self.endpoint_problems = []
        self.resolving = None    # a background lookup of etcd host names
        self.peer_map = None     # lease key -> underlay addresses of each peer (None: read them all)
        self.peer_addresses = ()
        self.allowed_addresses = ()
        self.spec = None         # the last spec built, and the inputs it was built from
        self.spec_inputs = None
        self.records_stamp = None  # (mtime_ns, config entries) the allowed pods were read at
        self.excepted = {}       # "ns/name" -> [address] of local pods let through
        self.peers_pending = False
        # pods named in ControlPlaneAccess whose ADD is under way (a CNI worker thread):
        # "ns/name" -> (addresses, monotonic deadline), until their port record shows
        self.arriving = {}
        self.arriving_lock = threading.Lock()
        self.arriving_version = 0

    # -- hooks --------------------------------------------------------------------------
    def on_config_event(self, text):
        self.watched, self.watched_text = True, text

    def config_changed(self, old, new):
        self.records_stamp = None  # ControlPlaneAccess or the backend port may differ

    def after_prepare(self):
        if self.schedule is None:  # before the first listing: a change after it is never missed
            table = control_guard.table_name(self.agent.name)
            self.schedule = for_controller(self, lambda: TableChanges(control_guard.FAMILY, table))
        if not self.endpoints:
            self._resolve_endpoints(wait=True)
        if self.state is None and self._kept():
            return  # a table kept from before: it guards until the first listing brings the peers
        self.reconcile(first=self.state is None)

    def _kept(self) -> bool:
        try:
            return control_guard.refused(self.agent.name) is not None
        except DatapathError:
            return False  # the pass says why

    def sync(self, raw):
        self.peer_map = None
        self.reconcile(first=self.state is None)  # the listing brought the peers: guard their ports now

    def on_lease_event(self, kind, key, value, received, created=0):
        # the overlay controller (earlier in order) has updated agent.peers; O(1) per event:
        # the event's own key, and a count that disagrees (an overlap re-judged other
        # leases) makes the next reading take them all
        peers, known = self.agent.peers, self.peer_map
        if known is None:  # read whole at the next pass
            self._pass_soon()
            return
        lease = peers.get(key)
        addresses = _underlay(lease) if lease is not None else None
        if known.get(key) == addresses and len(known) == len(peers):
            return
        if addresses is None:
            known.pop(key, None)
        else:
            known[key] = addresses
        if len(known) != len(peers):
            self.peer_map = None
        self.peer_addresses = None
        self._pass_soon()

    def _pass_soon(self):
        if not self.peers_pending:  # one pass after the burst of events
            self.peers_pending = True
            self.agent.call_soon(self._peers_changed)

    def attaching(self, ips, namespace, name):
        """A pod named in ControlPlaneAccess is being added through this agent: let its
        addresses through from its first packet (the loop programs them at once, before
        the pod's interface is up, rather than at the next reconcile)."""
        config = self.agent.config
        if config is None or not matches(config.control_plane_access, namespace, name):
            return
        with self.arriving_lock:
            self.arriving[f"{namespace}/{name}"] = (tuple(str(ip) for ip in ips),
                                                    time.monotonic() + ARRIVING_GRACE)
            self.arriving_version += 1
        self.agent.call_soon(self._arrived)

    def _arrived(self):
        if self.state == "installed":
            self.reconcile()

    def _peers_changed(self):
        self.peers_pending = False
        if self.state == "installed":
            self.reconcile()

    def timers(self):
        return [(self.agent.options.reconcile_interval, self.reconcile)]

    def while_waiting(self):
        if self.agent.held is not None and self.agent.config is not None:
            self.reconcile(ask_etcd=False)

    def close(self):
        if self.schedule is not None:
            self.schedule.close()

    def status(self):
        return {"controlPlane": {
            "table": f"{control_guard.FAMILY} {control_guard.table_name(self.agent.name)}",
            "state": self.state,
            "endpoints": [f"[{a}]:{p}" if a.version == 6 else f"{a}:{p}"
                          for a, p in sorted({e for found in self.endpoints.values() for e in found},
                                             key=lambda e: (e[0].version, e[0], e[1]))],
            "endpointProblems": list(self.endpoint_problems),
            "ports": [f"{proto}/{port}" for proto, port in self._ports()] if self.agent.config else [],
            "exceptions": list(self.agent.config.control_plane_access) if self.agent.config else [],
            "excepted": [{"pod": pod, "addresses": addresses} for pod, addresses in sorted(self.excepted.items())],
            "refused": self.refused, "refusedFlows": self.flows, "driftRepaired": self.drift_repaired,
            "lastCheck": self.last_check,
            "kernelReads": self.schedule.status() if self.schedule is not None else None}}

    # -- the spec -----------------------------------------------------------------------
    def _resolve_endpoints(self, wait: bool):
        """Look the etcd endpoints up again; names keep their last good answer on failure.
        Off the loop (a thread) unless `wait`: a slow resolver must not hold the network."""
        targets, problems = etcd_targets(etcd_flags.endpoints(self.agent.options))
        named = [t for t in targets if not _literal(t[0])]
        endpoints = {t: v for t, v in self.endpoints.items() if t in targets}
        for target in targets:
            if _literal(target[0]):
                endpoints[target] = resolve(*target)
        if endpoints != self.endpoints:  # the same object while nothing changed: the spec is kept
            self.endpoints = endpoints
        self.endpoint_problems = problems
        if not named or (self.resolving is not None and self.resolving.is_alive()):
            return

        def lookup():
            for target in named:
                try:
                    found = resolve(*target)
                except OSError as exc:
                    kept = self.endpoints.get(target)
                    self.agent.log.warning(f"cannot resolve etcd endpoint {target[0]} ({exc}); guarding "
                                           f"{'its last known addresses' if kept else 'nothing for it yet'}",
                                           extra=self.agent.extra())
                    continue
                if found and self.endpoints.get(target) != found:
                    self.endpoints = {**self.endpoints, target: found}  # one assignment: the loop reads it

        if wait:
            lookup()
        else:
            self.resolving = threading.Thread(target=lookup, name=f"weftd-resolve-{self.agent.name}", daemon=True)
            self.resolving.start()

    def _ports(self) -> list:
        ports = [("tcp", int(self.agent.options.metrics_port))]
        backend = self.agent.config.backend
        udp = getattr(backend, "port", None) or getattr(backend, "listen_port", None)  # VXLAN, WireGuard
        if isinstance(udp, int) and udp:
            ports.append(("udp", udp))
        return ports

    def _peers(self) -> tuple:
        """The other nodes' underlay addresses: read whole after a listing (sync), then
        kept up to date one lease event at a time (on_lease_event)."""
        if self.peer_map is None:
            self.peer_map = {key: _underlay(lease) for key, lease in self.agent.peers.items()}
            self.peer_addresses = None
        if self.peer_addresses is None:
            self.peer_addresses = tuple(sorted({a for found in self.peer_map.values() for a in found},
                                               key=lambda a: (a.version, int(a))))
        return self.peer_addresses

    def _allowed(self, force: bool) -> tuple:
        """Addresses of this node's pods named in ControlPlaneAccess; the records directory
        is read only when it (or the config) changed since the last reading, or on `force`."""
        entries = self.agent.config.control_plane_access
        if not entries:
            self.excepted, self.records_stamp, self.allowed_addresses = {}, (None, entries), ()
            return self.allowed_addresses
        where = port_records.directory(self.agent.options.run_dir, self.agent.name)
        try:
            mtime = os.stat(where).st_mtime_ns
        except OSError:
            mtime = None
        moment = time.monotonic()
        with self.arriving_lock:
            arriving = dict(self.arriving)
            stamp = (mtime, entries, self.arriving_version)
        expired = any(deadline <= moment for _, deadline in arriving.values())
        if not force and not expired and self.records_stamp == stamp:
            return self.allowed_addresses
        records, problems = port_records.read_all(where)
        for problem in problems:
            self.agent.log.warning(f"control-plane guard: {problem}", extra=self.agent.extra())
        excepted = {}
        for record in records.values():
            if matches(entries, record.pod_namespace, record.pod_name):
                excepted.setdefault(record.pod, []).extend(str(a) for a in record.addresses)
        recorded = {a for found in excepted.values() for a in found}
        with self.arriving_lock:  # a pod whose record shows (or whose ADD never finished) is done
            for pod, (addresses, deadline) in list(self.arriving.items()):
                if deadline <= moment or set(addresses) <= recorded or not matches(entries, *pod.split("/", 1)):
                    del self.arriving[pod]
                elif pod not in excepted:
                    excepted[pod] = list(addresses)
        if excepted != self.excepted:
            self.agent.log.info(f"control-plane guard lets through {', '.join(sorted(excepted)) or 'no pod'} "
                                f"(ControlPlaneAccess {', '.join(entries)})", extra=self.agent.extra())
        self.excepted, self.records_stamp = excepted, stamp
        addresses = tuple(sorted({ipaddress.ip_address(a) for found in excepted.values() for a in found},
                                 key=lambda a: (a.version, int(a))))
        if addresses != self.allowed_addresses:  # the same object while nothing changed
            self.allowed_addresses = addresses
        return self.allowed_addresses

    def _spec(self, force: bool):
        """The wanted table; built again only when one of its inputs is another object."""
        agent = self.agent
        inputs = (agent.held, agent.config, self._allowed(force), self.endpoints, self._peers(),
                  agent.options.metrics_port)
        if self.spec_inputs is None or any(a is not b for a, b in zip(inputs, self.spec_inputs)):
            lease, config = agent.held.lease, agent.config
            self.spec = control_guard.guard(
                agent.name, pods=[n for n in (lease.subnet, lease.ipv6_subnet) if n is not None],
                cluster=[n for n in (config.network, config.ipv6_network) if n is not None],
                allowed=inputs[2], etcd=[e for found in self.endpoints.values() for e in found],
                ports=self._ports(), peers=inputs[4])
            self.spec_inputs = inputs
        return self.spec

    def _gone(self, ask_etcd: bool) -> bool:
        """True when the network config left etcd (an outage or unreadable answer is not gone)."""
        if not ask_etcd:
            return False
        if self.watched:
            return self.watched_text is None
        try:
            return self.agent.registry.get_network_config(self.agent.name) is None
        except RegistryError:
            return False

    # -- the pass -----------------------------------------------------------------------
    def reconcile(self, first=False, ask_etcd=True):
        agent = self.agent
        self.last_check = time.time()
        self.passes += 1
        backstop = first or self.passes % FULL_READ_EVERY == 0  # resolve the endpoints again
        before = self.state
        read = self.schedule.next() if self.schedule is not None else None  # drains the notifications
        touched = read is not None and read.full
        try:
            if self._gone(ask_etcd and not first):
                self.ensured, self.counted = None, None
                if control_guard.remove(agent.name):
                    agent.log.info(f"control-plane table {control_guard.table_name(agent.name)} removed: "
                                   "the network config left etcd", extra=agent.extra())
                self.state = "absent"
                return
            if backstop and not first:
                self._resolve_endpoints(wait=False)  # its answer lands in a later pass
            if before == "installed":
                self._harvest()
            spec = self._spec(force=backstop)
            if not touched and before == "installed" and spec == self.ensured:
                return  # nothing touched the table since it matched this spec
            expected = spec != self.ensured  # a new spec: differences are updates, not drift
            self.ensured = None
            read = read if touched else self.schedule.taken("the wanted table changed") if self.schedule else None
            outcome = control_guard.ensure(spec)
            self.ensured = spec
            if read is not None:
                self.schedule.full_read_done(read)
        except DatapathError as exc:
            if self.schedule is not None:
                self.schedule.again()
            self.state = f"failed: {exc}"
            agent.log.error(f"control-plane table not in place: {exc}", extra=agent.extra())
            return
        self.state = "installed"
        if outcome.action in ("created", "rebuilt"):
            self.counted, self.seen = 0, {}  # a new table: its counter and sets start empty
        elif self.counted is None:
            self._baseline()
        self._report(outcome, first or before in (None, "absent"), expected)

    def _report(self, outcome, starting, expected):
        agent = self.agent
        table = control_guard.table_name(agent.name)
        if not outcome.changed:
            return
        if outcome.action == "created" and starting:
            agent.log.info(f"control-plane table {table} created", extra=agent.extra())
        elif starting or expected:
            agent.log.info(f"control-plane table {table} updated: {_short('; '.join(outcome.details))}",
                           extra=agent.extra())
        else:
            self.drift_repaired += 1
            agent.metrics.drift.labels(agent.name).inc()
            agent.log.warning(f"reconcile repaired control-plane table {table}: "
                              f"{_short('; '.join(outcome.details))}", extra=agent.extra())
            agent.write_status()
            return
        agent.status_changed()  # written once the burst of events that changed it is served

    # -- refusals -----------------------------------------------------------------------
    def _baseline(self):
        """A table kept from before this agent started: what it refused then was counted and
        journalled by the agent of the time, so start from what it holds now."""
        try:
            self.counted = control_guard.refused(self.agent.name)
            moment = time.monotonic()
            self.seen = {flow: moment + expires for flow, expires in control_guard.knocked(self.agent.name)}
        except DatapathError as exc:
            self.agent.log.warning(f"control-plane counter not read: {exc}", extra=self.agent.extra())

    def _harvest(self):
        """Journal the refused flows new since the last pass and count the packets refused.
        The knocked sets are read every pass (a small listing); the counter only when they
        hold a flow: every refusal of the last minute is in them (a full set or the rate
        limit only skip recording while they already hold flows), and passes come far
        more often than that, unless the loop was held up (then the counter is read)."""
        agent = self.agent
        moment = time.monotonic()
        gap, self.last_harvest = moment - (self.last_harvest or moment), moment
        spec = self.ensured
        versions = (4, 6) if spec is None or any(n.version == 6 for n in spec.cluster + spec.pods) else (4,)
        try:
            flows = control_guard.knocked(agent.name, versions)
            if not flows and self.counted is not None and gap < QUIET_GAP:
                self.seen = {}
                return
            packets = control_guard.refused(agent.name)
        except DatapathError as exc:
            agent.log.warning(f"refused flows not read: {exc}", extra=agent.extra())
            return
        if packets is None:
            return  # the table is gone: the pass rebuilds it
        grown = packets - self.counted if self.counted is not None and packets >= self.counted else packets
        self.counted = packets
        if grown > 0:
            self.refused += grown
            agent.metrics.control_refused.labels(agent.name).inc(grown)
            agent.status_changed()
        self._journal(flows)

    def _journal(self, flows):
        moment = time.monotonic()
        records, current, pods = [], {}, None
        for flow, expires in flows:
            current[flow] = moment + expires
            if flow in self.seen and moment < self.seen[flow]:
                continue
            if pods is None:
                pods = self._pods_by_address()
            records.append(self._record(flow, expires, pods))
        self.seen = current
        if not records:
            return
        agent = self.agent
        try:
            denial_journal.append(agent.options.state_dir, agent.name, records)
        except OSError as exc:
            where = denial_journal.path(agent.options.state_dir, agent.name)
            agent.log.error(f"refused flows not journalled in {where}: {exc.strerror}", extra=agent.extra())
        self.flows += len(records)
        for record in records:
            agent.log.info(f"control-plane guard refused {record['srcPod'] or record['src']} -> "
                           f"{record['dst']} {record['protocol']}/{record['port']} ({record['target']}); "
                           "ControlPlaneAccess names the pods let through", extra=agent.extra())

    def _record(self, flow, expires, pods) -> dict:
        src, dst, protocol, port = flow
        protocol = str(protocol).upper()
        # first seen: the element was added with the set's full timeout
        age = max(0, control_guard.KNOCKED_TIMEOUT - int(expires or 0))
        return {"ts": format_ts(now() - timedelta(seconds=age)), "node": self.agent.node.name,
                "network": self.agent.name, "kind": "control-plane", "direction": "egress",
                "src": str(src), "dst": str(dst), "protocol": protocol,
                "port": int(port) if str(port).isdigit() else port, "srcPod": pods.get(str(src)),
                "dstPod": None, "target": self._target(dst, protocol, port), "policies": []}

    def _target(self, dst, protocol, port) -> str:
        """"etcd" (an etcd endpoint), "overlay" (the backend's UDP port, here or at a peer)
        or "weftd" (its metrics port)."""
        spec = self.ensured
        try:
            address, port = ipaddress.ip_address(str(dst)), int(port)
        except ValueError:
            return "weftd"
        if spec is not None and protocol == "TCP" and (address, port) in spec.etcd:
            return "etcd"
        if protocol == "UDP":
            return "overlay"
        return "weftd"

    def _pods_by_address(self) -> dict:
        """{address: "namespace/name"} of this node's pods (their port records)."""
        where = port_records.directory(self.agent.options.run_dir, self.agent.name)
        records, _ = port_records.read_all(where)
        return {str(a): record.pod for record in records.values() for a in record.addresses}


def _short(text: str, limit: int = 2000) -> str:
    """A log line's details, cut (5,000 peers arriving at once make a long list)."""
    return text if len(text) <= limit else text[:limit] + f" ... ({len(text) - limit} more characters)"


def _underlay(lease) -> tuple:
    return tuple(a for a in (lease.public_ip, lease.public_ipv6) if a is not None)


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
