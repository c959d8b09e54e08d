"""weftctl flows: the flow journals (docs/flows.md), merged by time.

  weftctl flows [--dir DIR]... [--json] [--per-node] [--pod NS/NAME] [--namespace NS]
                [--node N] [--peer IP|CIDR] [--port P] [--verdict V] [--policy NS/NAME]
                [--since T] [--until T] [--follow]
"""

import ipaddress
import json
import sys
import time

from .. import paths

EXIT_OK, EXIT_USAGE = 0, 2
FOLLOW_POLL = 0.5


def add_parser(commands):
    flows = commands.add_parser("flows", help="flow records: who talked to whom, allowed or denied")
    flows.add_argument("--dir", action="append", dest="dirs", metavar="DIR",
                       help=f"a flow journal directory; repeat for several nodes' (default {paths.FLOW_LOG_DIR})")
    flows.add_argument("--json", action="store_true", help="the records as JSON lines")
    flows.add_argument("--per-node", action="store_true", help="each node's record of a cross-node "
                       "connection on its own line (default: merged)")
    flows.add_argument("--pod", metavar="NS/NAME", help="flows from or to this pod")
    flows.add_argument("--namespace", metavar="NS", help="flows from or to pods of this namespace")
    flows.add_argument("--node", help="flows this node recorded")
    flows.add_argument("--peer", metavar="IP|CIDR", help="flows with an end (or Service address) in it")
    flows.add_argument("--port", type=int, metavar="P", help="flows with this source or destination port")
    flows.add_argument("--verdict", choices=("allowed", "denied"))
    flows.add_argument("--policy", metavar="NS/NAME", help="flows this policy decided")
    flows.add_argument("--since", metavar="T", help="flows that ended at or after this time (ISO-8601)")
    flows.add_argument("--until", metavar="T", help="flows that started at or before this time (ISO-8601)")
    flows.add_argument("--follow", action="store_true", help="keep printing records as they are written")


def _fail(msg: str) -> int:
    print(f"weftctl: {msg}", file=sys.stderr)
    return EXIT_USAGE


def filters_of(args):
    from ..flows.reader import Filters
    from ..timestamps import parse_ts

    times = {}
    for flag in ("since", "until"):
        text = getattr(args, flag, None)
        try:
            times[flag] = parse_ts(text) if text else None
        except ValueError:
            raise ValueError(f"--{flag} {text!r} is not an ISO-8601 time (e.g. 2026-11-22T18:00:00Z)") from None
    if getattr(args, "peer", None):
        try:
            ipaddress.ip_network(args.peer, strict=False)
        except ValueError:
            raise ValueError(f"--peer {args.peer!r} is not an IP address or CIDR") from None
    if getattr(args, "pod", None) and "/" not in args.pod:
        raise ValueError(f"--pod {args.pod!r} is not NAMESPACE/NAME")
    return Filters(pod=getattr(args, "pod", None), namespace=getattr(args, "namespace", None),
                   node=getattr(args, "node", None), peer=getattr(args, "peer", None),
                   port=getattr(args, "port", None), verdict=getattr(args, "verdict", None),
                   policy=getattr(args, "policy", None), **times)


def _print(records, as_json):
    from ..flows.reader import line, public

    for record in records:
        if as_json:
            print(json.dumps(public(record), sort_keys=True))
        else:
            print(line(record))
    sys.stdout.flush()


def run(args) -> int:
    from ..flows import reader

    try:
        keep = filters_of(args)
    except ValueError as exc:
        return _fail(str(exc))
    dirs = args.dirs or [paths.FLOW_LOG_DIR]
    records = reader.read(dirs)
    if not args.per_node:
        records = reader.merge_pairs(records)
    _print([r for r in records if keep(r)], args.json)
    if args.follow:
        return _follow(dirs, keep, args.json)
    return EXIT_OK


def _follow(dirs, keep, as_json) -> int:
    """New lines of every journal as they are written (per node: a pair is not waited for)."""
    from ..flows import reader

    offsets = {}
    for directory in dirs:
        for path in reader.journal_files(directory):
            offsets[path] = _size(path)
    try:
        while True:
            time.sleep(FOLLOW_POLL)
            fresh = []
            for directory in dirs:
                for path in reader.journal_files(directory):
                    size = _size(path)
                    start = offsets.get(path, 0)
                    if size < start:  # rotated: a new file under the old name
                        start = 0
                    if size == start:
                        continue
                    with open(path, "rb") as handle:
                        handle.seek(start)
                        data = handle.read(size - start)
                    complete = data.rpartition(b"\n")[0]
                    offsets[path] = start + (len(complete) + 1 if complete else 0)
                    for text in complete.decode("utf-8", "replace").splitlines():
                        record = reader.parse_line(text)
                        if record is not None and keep(record):
                            fresh.append(record)
            _print(reader.sort(fresh), as_json)
    except KeyboardInterrupt:
        return EXIT_OK


def _size(path) -> int:
    import os

    try:
        return os.stat(path).st_size
    except OSError:
        return 0
