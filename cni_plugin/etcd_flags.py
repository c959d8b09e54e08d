"""The etcd flags weftd and weftctl share, and the registry they describe."""

import os

from . import paths

PASSWORD_ENV = "WEFTD_ETCD_PASSWORD"


def add(parser, endpoints_env: str = None, title: str = None) -> None:
    """--etcd-endpoints/-prefix/-cafile/-certfile/-keyfile/-username on `parser`.
    endpoints_env: an environment variable whose value is the endpoints' default."""
    group = parser.add_argument_group(title) if title else parser
    if endpoints_env:
        group.add_argument("--etcd-endpoints", default=os.environ.get(endpoints_env, paths.ETCD_ENDPOINTS),
                           help=f"comma-separated etcd client URLs (default ${endpoints_env} or "
                                f"{paths.ETCD_ENDPOINTS})")
    else:
        group.add_argument("--etcd-endpoints", default=paths.ETCD_ENDPOINTS,
                           help="comma-separated etcd client URLs (default %(default)s)")
    group.add_argument("--etcd-prefix", default=paths.ETCD_PREFIX, help="key prefix (default %(default)s)")
    group.add_argument("--etcd-cafile", help="CA bundle for https endpoints")
    group.add_argument("--etcd-certfile", help="client certificate")
    group.add_argument("--etcd-keyfile", help="client key")
    group.add_argument("--etcd-username", help=f"etcd user; password from ${PASSWORD_ENV}")


def endpoints(args) -> list:
    return [e.strip() for e in args.etcd_endpoints.split(",") if e.strip()]


def registry(args):
    """The EtcdRegistry the parsed flags describe (imports grpc: call only when needed)."""
    from .subnet.etcd_registry import EtcdRegistry

    return EtcdRegistry(endpoints(args), prefix=args.etcd_prefix, cafile=args.etcd_cafile,
                        certfile=args.etcd_certfile, keyfile=args.etcd_keyfile,
                        username=args.etcd_username, password=os.environ.get(PASSWORD_ENV))
