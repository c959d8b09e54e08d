"""One network served by weftd: lease, subnet file, overlay, watch and reconcile.

Each network runs in its own thread, so a broken network (bad config in etcd, no
free subnet) never stops the others.  etcd outages keep the datapath as it is and
keep repairing the kernel against the last known leases.
"""

import ipaddress
import queue
import threading
import time

from ..subnet import status_file, subnet_file
from ..subnet.lease import ConfigError, Lease, NetworkConfig
from ..subnet.lease_manager import LeaseConflict, LeaseManager, NoFreeSubnet, remote_leases
from ..subnet.registry import RegistryError

BACKOFF_MIN, BACKOFF_MAX = 0.5, 5.0
RENEW_EVERY_MAX = 3600.0


class NetworkAgent:
    def __init__(self, name, registry, options, node, metrics, log, backend_factory, history_publisher=None):
        self.name = name
        self.registry = registry
        self.options = options
        self.node = node  # agent.node.NodeIdentity
        self.metrics = metrics
        self.log = log
        self.backend_factory = backend_factory
        self.history = history_publisher
        self.config = None
        self.manager = None
        self.held = None
        self.backend = None
        self.peers = {}  # key -> Lease of every other node
        self.problem = "starting"
        self.conflict = None
        self.drift_repaired = 0
        self.synced_once = False  # the first full sync programs every peer: not drift
        self.last_reconcile = None
        self.events = queue.Queue()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"weftd-{name}", daemon=True)

    # -- lifecycle ---------------------------------------------------------
    def start(self):
        self.thread.start()

    def stop(self, timeout=10.0):
        self.stopping.set()
        self.events.put(("stop", None, None, 0))
        self.thread.join(timeout)
        if self.backend is not None:
            self.backend.close()

    @property
    def ready(self) -> bool:
        return self.problem is None and self.conflict is None

    def _extra(self, **more):
        lease = self.held.lease.key if self.held else None
        return {"network": self.name, "node": self.node.name, "lease": lease, **more}

    # -- main loop ---------------------------------------------------------
    def _run(self):
        backoff = BACKOFF_MIN
        while not self.stopping.is_set():
            try:
                self._prepare()
                self._serve()
                backoff = BACKOFF_MIN
                continue
            except RegistryError as exc:
                self.metrics.etcd_errors.labels(self.name).inc()
                self._trouble(f"etcd unavailable: {exc}", "warning")
            except ConfigError as exc:
                self._trouble(f"network config unusable: {exc}", "error")
            except NoFreeSubnet as exc:
                self._trouble(str(exc), "error")
            except LeaseConflict as exc:
                self.conflict = str(exc)
                self.metrics.conflict.labels(self.name).set(1)
                self._trouble(None, "error", str(exc))
            except Exception as exc:  # a bug: report, keep the datapath, retry
                self.log.exception("network loop failed", extra=self._extra(error=repr(exc)))
                self._trouble(f"internal error: {exc!r}", None)
            self._repair_while_waiting(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _trouble(self, problem, level, message=None):
        if problem is not None:
            self.problem = problem
        self.metrics.ready.labels(self.name).set(0)
        if level:
            getattr(self.log, level)(message or problem, extra=self._extra())
        self._write_status()

    def _repair_while_waiting(self, seconds):
        """Until the next attempt, keep the kernel in line with the last known leases."""
        deadline = time.monotonic() + seconds
        # only against leases actually seen: an empty list would tear down every peer
        if self.backend is not None and self.held is not None and self.synced_once:
            self._reconcile()
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                event = self.events.get(timeout=left)
                if event[0] == "stop":
                    return
            except queue.Empty:
                return

    # -- setup: config, lease, datapath, subnet file -------------------------
    def _prepare(self):
        if self.config is None:
            text = self.registry.get_network_config(self.name)
            if text is None:
                raise ConfigError(f"network {self.name}: no config at "
                                  f"{self.registry.config_key(self.name)}; set it with "
                                  f"weftctl network set {self.name} --config FILE")
            self.config = NetworkConfig.parse(self.name, text)
            template = Lease(subnet=ipaddress.IPv4Network("0.0.0.0/32"), public_ip=self.node.public_ip,
                             node_name=self.node.name, backend_type=self.config.backend_type,
                             vni=self.config.vni, vtep_mac=self.node.vtep_mac(self.name),
                             public_ipv6=self.node.public_ipv6)
            self.manager = LeaseManager(self.registry, self.config, template, self.options.state_dir)
        if self.held is None:
            self.held = self.manager.acquire(self.options.lease_ttl)
            self.conflict = None
            self.metrics.conflict.labels(self.name).set(0)
            self.log.info("lease acquired", extra=self._extra())
        if self.backend is None:
            self.backend = self.backend_factory(self.config, self.node, self.log)
        mtu = self.backend.setup(self.held.lease)
        self._write_subnet_file(mtu)
        self.metrics.leases_held.labels(self.name).set(1)

    def _write_subnet_file(self, mtu):
        lease, config = self.held.lease, self.config
        gateway = lease.subnet.network_address + 1
        v6 = None
        if lease.ipv6_subnet is not None:
            v6 = ipaddress.IPv6Interface(f"{lease.ipv6_subnet.network_address + 1}/{lease.ipv6_subnet.prefixlen}")
        subnet_file.write(f"{self.options.run_dir}/{self.name}.env", subnet_file.SubnetLease(
            network=config.network,
            subnet=ipaddress.IPv4Interface(f"{gateway}/{lease.subnet.prefixlen}"),
            mtu=config.mtu or mtu, ipmasq=config.ip_masq,
            ipv6_network=config.ipv6_network if v6 else None, ipv6_subnet=v6))

    # -- steady state: watch + periodic reconcile and renewal -----------------
    def _serve(self):
        self._renew(verify=True)  # recreates a vanished lease, or raises LeaseConflict
        raw, revision = self.registry.list_leases(self.name)
        own = self.held.lease.key
        self._check_own(raw)
        if self.conflict is not None:
            self.log.info("lease conflict resolved", extra=self._extra())
        self.conflict = None
        self.metrics.conflict.labels(self.name).set(0)
        self.peers = {lease.key: lease for lease in remote_leases(raw, own)}
        self.problem = None
        self._reconcile()
        cancel = self.registry.watch_leases(self.name, revision + 1, self._on_watch)
        try:
            self._event_loop()
        finally:
            cancel()

    def _on_watch(self, kind, key, value, revision):
        self.events.put((kind, key, value, time.monotonic()))

    def _event_loop(self):
        interval = self.options.reconcile_interval
        renew_every = min(self.options.lease_ttl / 3.0, RENEW_EVERY_MAX)
        next_reconcile = time.monotonic() + interval
        next_renew = time.monotonic() + renew_every
        while not self.stopping.is_set():
            wait = max(0.0, min(next_reconcile, next_renew) - time.monotonic())
            try:
                kind, key, value, received = self.events.get(timeout=wait)
                if kind == "stop":
                    return
                if kind == "resync":
                    self.log.info("watch ended; relisting leases", extra=self._extra())
                    return
                self.metrics.events.labels(self.name, kind).inc()
                self._on_lease_event(kind, key, value, received)
            except queue.Empty:
                pass
            now = time.monotonic()
            if now >= next_renew:
                self._renew()
                next_renew = now + renew_every
            if now >= next_reconcile:
                self._reconcile()
                next_reconcile = now + interval

    def _on_lease_event(self, kind, key, value, received):
        if key == self.held.lease.key:
            if kind == "delete":
                self.log.warning("our lease vanished; recreating it", extra=self._extra())
                self._renew(verify=True)
            else:
                self._check_own([(key, value, 1)])
            return
        if kind == "put":
            try:
                lease = Lease.from_json(key, value)
            except ConfigError as exc:
                self.log.error("ignoring unreadable lease", extra=self._extra(peer=key, error=exc))
                return
            self.peers[key] = lease
            self._program(self.backend.apply, lease, "peer programmed")
        else:
            lease = self.peers.pop(key, None)
            if lease is not None:
                self._program(self.backend.remove, lease, "peer removed")
        self.metrics.program_seconds.labels(self.name).observe(time.monotonic() - received)
        self.metrics.peers.labels(self.name).set(len(self.peers))
        self._write_status()

    def _program(self, step, lease, done: str):
        peer = f"{lease.key} {lease.node_name} {lease.public_ip}"
        try:
            step(lease)
        except Exception as exc:  # the next reconcile retries; say what failed now
            self.log.error(f"{done.split()[1]} failed: {exc}", extra=self._extra(peer=peer))
            return
        self.log.info(done, extra=self._extra(peer=peer))

    def _check_own(self, raw):
        """Our key must still name us; another node's name there is a conflict."""
        for key, value, _ in raw:
            if key != self.held.lease.key:
                continue
            try:
                lease = Lease.from_json(key, value)
            except ConfigError:
                continue
            if lease.node_name != self.node.name:
                raise LeaseConflict(f"network {self.name}: subnet {key} of node {self.node.name} is "
                                    f"now held by {lease.node_name}; keeping the datapath")

    def _renew(self, verify=False):
        before = self.held.lease_id
        self.held = self.manager.renew(self.held, self.options.lease_ttl, verify)
        self.metrics.renewals.labels(self.name).inc()
        if self.held.lease_id != before:
            self.log.warning("lease recreated after it vanished", extra=self._extra())
            self._write_status()

    def _reconcile(self):
        started = time.monotonic()
        try:
            drift = self.backend.reconcile(list(self.peers.values()))
        except Exception as exc:  # OverlayError carries what was done before the failures
            self.log.error(f"reconcile incomplete: {exc}", extra=self._extra())
            drift = getattr(exc, "drift", None)
            if drift is None:
                return
        self.metrics.reconcile_seconds.labels(self.name).observe(time.monotonic() - started)
        repaired = drift.added + drift.removed
        if repaired and not self.synced_once:
            self.log.info(f"programmed {repaired} kernel entries for {len(self.peers)} peers",
                          extra=self._extra())
        elif repaired:
            self.drift_repaired += repaired
            self.metrics.drift.labels(self.name).inc(repaired)
            self.log.warning(f"reconcile repaired {repaired} kernel entries: {'; '.join(drift.details)}",
                             extra=self._extra())
        self.synced_once = True
        self.last_reconcile = time.time()
        self.metrics.peers.labels(self.name).set(len(self.peers))
        self.metrics.ready.labels(self.name).set(1 if self.ready else 0)
        self._publish_history()
        self._write_status()

    def _publish_history(self):
        if self.history is None:
            return
        try:
            self.history.publish(self.name)
        except RegistryError as exc:  # an outage: the journal waits at its offset
            self.metrics.etcd_errors.labels(self.name).inc()
            self.log.warning("history not published", extra=self._extra(error=exc))

    def _write_status(self):
        lease = self.held.lease if self.held else None
        status_file.write(status_file.path_for(self.options.run_dir, self.name), {
            "network": self.name,
            "node": self.node.name,
            "ready": self.ready,
            "problem": self.problem,
            "conflict": self.conflict,
            "lease": {"subnet": str(lease.subnet), "ipv6Subnet": str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
                      "publicIP": str(lease.public_ip), "vtepMAC": lease.vtep_mac,
                      "leaseID": self.held.lease_id} if lease else None,
            "backend": self.config.backend_type if self.config else None,
            "peers": sorted(f"{p.key} {p.node_name} {p.public_ip}" for p in self.peers.values()),
            "driftRepaired": self.drift_repaired,
            "lastReconcile": self.last_reconcile,
        })
