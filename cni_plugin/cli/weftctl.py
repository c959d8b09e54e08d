"""weftctl: the operator CLI.  Today: `weftctl whois IP [--at TIME]` from the IPAM history."""

import argparse
import ipaddress
import json
import sys

from ..ipam import history
from ..ipam.config import DEFAULT_DATA_DIR

EXIT_OK, EXIT_NO_HOLDER, EXIT_USAGE = 0, 1, 2
_LATER = ("network", "leases", "status")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weftctl", description="Inspect a weft node.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    whois = commands.add_parser("whois", help="who holds (or held) an IP address")
    whois.add_argument("ip", metavar="IP")
    whois.add_argument("--at", metavar="ISO-TIME",
                       help="when, ISO-8601; no zone means UTC (default: now)")
    whois.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                       help=f"weft-ipam dataDir (default {DEFAULT_DATA_DIR})")
    whois.add_argument("--json", action="store_true", help="print JSON")
    for name in _LATER:
        later = commands.add_parser(name, help="not implemented yet")
        later.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _short_ts(moment) -> str:
    layout = "%Y-%m-%dT%H:%M:%S.%fZ" if moment.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return moment.strftime(layout)


def _holder_line(record: dict) -> str:
    namespace, name = record.get("podNamespace"), record.get("podName")
    pod = f"{namespace}/{name}" if namespace and name else "an unknown pod"
    since = _short_ts(history.parse_ts(record["ts"]).replace(microsecond=0))
    return (
        f"{record['ip']} held by {pod} (container {record.get('containerID')}, "
        f"{record.get('ifname')}) on network {record.get('network')} since {since}"
    )


def _usage_error(msg: str) -> int:
    print(f"weftctl: {msg}", file=sys.stderr)
    return EXIT_USAGE


def whois(args) -> int:
    try:
        ip = ipaddress.ip_address(args.ip)
    except ValueError:
        return _usage_error(f"{args.ip!r} is not an IP address")
    try:
        at = history.parse_ts(args.at) if args.at is not None else None
    except ValueError:
        return _usage_error(
            f"--at {args.at!r} is not an ISO-8601 time (e.g. 2026-11-22T18:00:00Z)"
        )
    holders = history.whois(args.data_dir, ip, at)
    when = _short_ts(at or history.now().replace(microsecond=0))
    if args.json:
        print(json.dumps({"ip": str(ip), "at": when, "holders": holders}, indent=2))
    elif holders:
        for record in holders:
            print(_holder_line(record))
    else:
        print(f"{ip}: no holder at {when}")
    return EXIT_OK if holders else EXIT_NO_HOLDER


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "whois":
        return whois(args)
    print("not implemented yet: arrives with the weftd agent", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
