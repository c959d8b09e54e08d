"""weftd's command line (every path is a flag so several agents share a machine)."""

import argparse
import os
import socket

from ..ipam.config import DEFAULT_DATA_DIR as IPAM_DATA_DIR


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="weftd",
        description="weft node agent: leases this node's subnet per network in etcd, writes the "
                    "subnet file the plugin reads, and programs the VXLAN or host-gw overlay.")
    p.add_argument("--etcd-endpoints", default="http://127.0.0.1:2379",
                   help="comma-separated etcd client URLs (default %(default)s)")
    p.add_argument("--etcd-prefix", default="/weft", help="key prefix (default %(default)s)")
    p.add_argument("--etcd-cafile", help="CA bundle for https endpoints")
    p.add_argument("--etcd-certfile", help="client certificate")
    p.add_argument("--etcd-keyfile", help="client key")
    p.add_argument("--etcd-username", help="etcd user; password from $WEFTD_ETCD_PASSWORD")
    p.add_argument("--node-name", default=socket.gethostname(), help="default: the hostname")
    p.add_argument("--public-ip", help="this node's underlay address (default: from --iface)")
    p.add_argument("--iface", help="underlay interface (default: the default route's)")
    p.add_argument("--network", action="append", dest="networks", metavar="NAME",
                   help="network to serve; repeat for several (default: weft)")
    p.add_argument("--run-dir", default="/run/weft",
                   help="subnet files <network>.env, status files, the agent socket (default %(default)s)")
    p.add_argument("--state-dir", default="/var/lib/weft",
                   help="recorded subnets and VTEP MACs (default %(default)s)")
    p.add_argument("--lease-ttl", type=int, default=86400, metavar="SECONDS",
                   help="etcd lease TTL (default %(default)s)")
    p.add_argument("--reconcile-interval", type=float, default=10.0, metavar="SECONDS",
                   help="full kernel-vs-etcd comparison period (default %(default)s)")
    p.add_argument("--metrics-addr", default="127.0.0.1:9465",
                   help="HOST:PORT for /metrics, /healthz, /readyz (default %(default)s)")
    p.add_argument("--ipam-data-dir", default=IPAM_DATA_DIR,
                   help="weft-ipam dataDir whose history is published to etcd (default %(default)s)")
    p.add_argument("--history-retention", type=float, default=168.0, metavar="HOURS",
                   help="how long published IP history is kept in etcd (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def parse(argv=None) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    args.networks = args.networks or ["weft"]
    if len(set(args.networks)) != len(args.networks):
        p.error("--network names must be distinct")
    args.etcd_endpoints = [e.strip() for e in args.etcd_endpoints.split(",") if e.strip()]
    args.etcd_password = os.environ.get("WEFTD_ETCD_PASSWORD")
    if args.lease_ttl < 10:
        p.error("--lease-ttl must be at least 10 seconds")
    if args.reconcile_interval <= 0:
        p.error("--reconcile-interval must be positive")
    host, sep, port = args.metrics_addr.rpartition(":")
    if not sep or not port.isdigit():
        p.error(f"--metrics-addr {args.metrics_addr!r} is not HOST:PORT")
    args.metrics_host, args.metrics_port = host or "127.0.0.1", int(port)
    return args
