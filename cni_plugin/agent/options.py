"""weftd's command line (every path is a flag so several agents share a machine)."""

import argparse
import socket

from .. import paths
from .. import etcd_flags


# flag, default, type, metavar, help
_VALUED_FLAGS = (
    ("--run-dir", paths.RUN_DIR, str, None, "subnet files <network>.env, status files, the agent socket"),
    ("--state-dir", paths.STATE_DIR, str, None, "recorded subnets and VTEP MACs"),
    ("--lease-ttl", 86400, int, "SECONDS", "etcd lease TTL"),
    ("--reconcile-interval", 10.0, float, "SECONDS", "reconcile pass period: the kernel is compared with the "
     "known leases and tables where change notifications say it changed, entries without notifications "
     "(WireGuard peers) always"),
    ("--resync-interval", 300.0, float, "SECONDS", "a full read of every kernel entry weft owns at least this "
     "often, whatever change notifications said"),
    ("--metrics-addr", paths.METRICS_ADDR, str, None, "HOST:PORT for /metrics, /healthz, /readyz"),
    ("--ipam-data-dir", paths.IPAM_DATA_DIR, str, None, "weft-ipam dataDir whose history is published to etcd"),
    ("--history-retention", 168.0, float, "HOURS", "how long published IP history is kept in etcd"),
    ("--policy-source", "etcd", str, "SOURCE", "where NetworkPolicy objects come from: etcd (weftctl apply), "
     "kubernetes (the API server, with the ServiceAccount) or none (no enforcement)"),
    ("--kube-api-server", None, str, "URL", "the Kubernetes API for --policy-source kubernetes (None: "
     "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)"),
    ("--flow-log-dir", paths.FLOW_LOG_DIR, str, None, "flow records of networks with FlowLog on: "
     "<network>.jsonl, rotated beside it (docs/flows.md)"),
    ("--flow-log-interval", 60.0, float, "SECONDS", "a long-lived connection gets an interim flow record at "
     "least this often"),
    ("--flow-log-max-bytes", 64 << 20, int, "BYTES", "a flow journal is rotated at this size"),
    ("--flow-log-max-age", 86400.0, float, "SECONDS", "a flow journal is rotated at this age; rotated ones "
     "older than --flow-log-files times this are removed"),
    ("--flow-log-files", 4, int, "N", "rotated flow journals kept per network (<network>.jsonl.1 .. .N)"),
    ("--flow-log-template-interval", 60.0, float, "SECONDS", "IPFIX templates are resent this often"),
    ("--kube-serviceaccount-dir", "/var/run/secrets/kubernetes.io/serviceaccount", str, None,
     "token and ca.crt for --policy-source kubernetes"),
)
POLICY_SOURCES = ("etcd", "kubernetes", "none")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="weftd",
        description="weft node agent: leases this node's subnet per network in etcd, writes the "
                    "subnet file the plugin reads, and programs the VXLAN or host-gw overlay.")
    etcd_flags.add(p)
    p.add_argument("--node-name", default=socket.gethostname(), help="default: the hostname")
    p.add_argument("--public-ip", help="this node's IPv4 underlay address (default: from --iface, or the "
                   "IPv4 default route's interface when no --public-ipv6 is given either)")
    p.add_argument("--public-ipv6", help="this node's IPv6 underlay address (default: from --iface, or the "
                   "IPv6 default route's interface when no --public-ip is given either; temporary, "
                   "deprecated and link-local addresses are never picked)")
    p.add_argument("--iface", help="underlay interface: the addresses not given by --public-ip/--public-ipv6 "
                   "are its first global ones (default: each family's default route's)")
    p.add_argument("--network", action="append", dest="networks", metavar="NAME",
                   help="network to serve; repeat for several (default: weft)")
    for flag, default, kind, metavar, what in _VALUED_FLAGS:
        p.add_argument(flag, default=default, type=kind, metavar=metavar, help=f"{what} (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def parse(argv=None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    args.networks = args.networks or ["weft"]
    if len(set(args.networks)) != len(args.networks):
        p.error("--network names must be distinct")
    if not etcd_flags.endpoints(args):
        p.error("--etcd-endpoints names no endpoint")
    if args.lease_ttl < 10:
        p.error("--lease-ttl must be at least 10 seconds")
    if args.reconcile_interval <= 0:
        p.error("--reconcile-interval must be positive")
    if not args.resync_interval > 0 or args.resync_interval == float("inf"):
        p.error("--resync-interval must be a positive number of seconds")
    if args.policy_source not in POLICY_SOURCES:
        p.error(f"--policy-source {args.policy_source!r} is not one of {', '.join(POLICY_SOURCES)}")
    for flag in ("flow_log_interval", "flow_log_max_age", "flow_log_template_interval"):
        value = getattr(args, flag)
        if not 0 < value < float("inf"):
            p.error(f"--{flag.replace('_', '-')} must be a positive number of seconds")
    if args.flow_log_max_bytes < 4096:
        p.error("--flow-log-max-bytes must be at least 4096")
    if args.flow_log_files < 0:
        p.error("--flow-log-files must be 0 or more")
    host, sep, port = args.metrics_addr.rpartition(":")
    if not sep or not port.isdigit():
        p.error(f"--metrics-addr {args.metrics_addr!r} is not HOST:PORT")
    args.metrics_host, args.metrics_port = host or "127.0.0.1", int(port)
    return args
