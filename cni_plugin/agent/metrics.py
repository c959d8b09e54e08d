"""Prometheus metrics and the /metrics, /healthz, /readyz endpoints."""

import os
import selectors
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.leases_held = Gauge("weft_leases_held", "Subnet leases this node holds", ["network"], registry=r)
        self.peers = Gauge("weft_peers_programmed", "Remote leases programmed in the kernel",
                           ["network"], registry=r)
        self.ready = Gauge("weft_network_ready", "1 when the network is fully served", ["network"], registry=r)
        self.config_problem = Gauge("weft_config_problem", "1 while this node cannot honour that key of the "
                                    "network config (the status's problem names the knob and the fix)",
                                    ["network", "key"], registry=r)
        self.conflict = Gauge("weft_lease_conflict", "1 when another node holds our subnet",
                              ["network"], registry=r)
        self.refused = Gauge("weft_lease_refusals", "Leases of the network refused by validation now, "
                             "by reason (never programmed)", ["network", "reason"], registry=r)
        self.refused_total = Counter("weft_leases_refused_total", "Lease refusals logged, by reason",
                                     ["network", "reason"], registry=r)
        self.collision = Gauge("weft_node_collision", "1 when another agent identity holds this "
                               "node name (fatal)", ["network"], registry=r)
        self.reconcile_seconds = Histogram("weft_reconcile_duration_seconds",
                                           "Full kernel-vs-etcd reconcile duration", ["network"], registry=r)
        self.spoofed = Counter("weft_spoofed_packets_total", "Packets pods sent as someone else (another "
                               "address or MAC), dropped by source validation", ["network"], registry=r)
        self.drift = Counter("weft_drift_repaired_total", "Kernel entries added or removed by reconcile",
                             ["network"], registry=r)
        self.kernel_reads = Counter("weft_kernel_reads_total", "Reconcile passes that read the kernel, by "
                                    "controller, scope (full, unnotified) and why", ["network", "controller",
                                                                                      "read", "why"], registry=r)
        self.etcd_errors = Counter("weft_etcd_errors_total", "Failed etcd operations", ["network"], registry=r)
        self.control_refused = Counter("weft_control_plane_refused_total", "Packets from pods to etcd or "
                                       "weftd's ports refused by the control-plane guard", ["network"], registry=r)
        self.policy_drops = Counter("weft_policy_drops_total", "New connections dropped while a "
                                    "NetworkPolicy isolated the pod", ["network", "policy"], registry=r)
        self.policy_programmed = Counter("weft_policy_programs_total", "Policy table changes applied, by kind",
                                         ["network", "kind"], registry=r)
        self.kube_watch_errors = Counter("weft_kube_watch_errors_total", "Kubernetes watch problems "
                                         "(--policy-source kubernetes), by reason: unparsable (a line "
                                         "skipped) or stream (a watch failed)", ["network", "reason"], registry=r)
        self.flows = Counter("weft_flows_total", "Flow records of ended connections (FlowLog), by verdict and "
                             "the policy that decided (\"\" when none isolated either end)",
                             ["network", "verdict", "policy"], registry=r)
        self.flow_bytes = Counter("weft_flow_bytes_total", "Bytes of recorded connections, both directions, by "
                                  "source and destination namespace (\"-\": not a pod; at most 200 pairs, "
                                  "then \"other\")", ["network", "src_namespace", "dst_namespace"], registry=r)
        self.flow_events_lost = Counter("weft_flow_events_lost_total", "Conntrack event overflows (ENOBUFS): "
                                        "each lost one or more connection events", ["network"], registry=r)
        self.flows_dropped = Counter("weft_flows_dropped_total", "Flow records not written, by reason (queue: "
                                     "the writer fell behind; disk-full, read-only, write-error: the journal)",
                                     ["network", "reason"], registry=r)
        self.renewals = Counter("weft_lease_renewals_total", "Successful lease renewals", ["network"], registry=r)
        self.events = Counter("weft_lease_events_total", "Lease changes received from the watch",
                              ["network", "kind"], registry=r)
        self.program_seconds = Histogram("weft_peer_program_seconds",
                                         "From watch event to kernel programmed",
                                         ["network"], registry=r,
                                         buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1))

        self.cni_seconds = Histogram("weft_cni_request_seconds",
                                     "CNI calls served on the agent socket, by plugin, command and exit",
                                     ["role", "command", "exit"], registry=r,
                                     buckets=(.002, .005, .01, .02, .05, .1, .25, .5, 1, 5))
        self.teardown_pending = Gauge("weft_teardown_pending", "DELs served whose background teardown has "
                                      "not finished (agent/teardown_queue.py)", registry=r)
        self.teardown_failed = Counter("weft_teardown_failures_total", "Background teardowns that failed "
                                       "and wait for a retry", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """The HTTP endpoints on a thread that sleeps until a client connects.

    http.server's serve_forever() polls for its shutdown flag every poll_interval
    (0.5 s): 20 wake-ups per quiet 10 s reconcile interval, ~1.7 ms of the agent's CPU
    there.  This loop waits on the listening socket and a wake-up pipe only; shutdown()
    writes to the pipe, so stopping still takes no time."""

    def __init__(self, host: str, port: int, handler):
        self.http = ThreadingHTTPServer((host, port), handler)
        self.http.daemon_threads = True
        self.http.timeout = 0.0  # handle_request() never blocks: a client gone before accept is skipped
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = False
        self.thread = threading.Thread(target=self._serve, name="weftd-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.http, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self.http and not self._stopping:
                        self.http.handle_request()  # a connection waits: accepted at once

    def shutdown(self) -> None:
        self._stopping = True
        os.write(self._wake_write, b"x")
        self.thread.join(5.0)
        self.http.server_close()
        os.close(self._wake_read)
        os.close(self._wake_write)


def serve(host: str, port: int, metrics: Metrics, health, readiness) -> MetricsServer:
    """Start the HTTP server in a daemon thread.  health()/readiness() -> (ok, text)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            if self.path == "/metrics":
                self._reply(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif self.path in ("/healthz", "/readyz"):
                ok, text = (health if self.path == "/healthz" else readiness)()
                self._reply(200 if ok else 503, (text + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._reply(404, b"not found: try /metrics, /healthz, /readyz\n", "text/plain")

        def _reply(self, code, body, content_type):
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep stderr for the structured log
            pass

    server = MetricsServer(host, port, Handler)
    server.start()
    return server
