"""weftctl's NetworkPolicy commands (etcd mode):

  weftctl apply -f FILE            validate every document, then store them all (or none)
  weftctl delete -f FILE           delete the objects the documents name
  weftctl policy explain SRC DST [PORT/PROTO]   which policies allow or deny a flow
  weftctl policy list              the stored objects
  weftctl policy denials [--since T]   this node's denied flows: the flow records with verdict
                                   denied (--flow-log-dir, FlowLog on) and the denial journal
                                   (weftd --state-dir: spoofing, control plane, FlowLog off)

FILE is multi-document YAML (or JSON) of NetworkPolicy, Namespace and Pod objects;
`-` reads standard input.  SRC/DST: a pod as namespace/name, or an address.
"""

import json
import sys

from ..checks import is_port

EXIT_OK, EXIT_DENIED, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3


def add_parsers(commands, etcd_flags):
    for verb, what in (("apply", "validate and store NetworkPolicy/Namespace/Pod objects"),
                       ("delete", "delete the objects a file names")):
        cmd = commands.add_parser(verb, help=what)
        cmd.add_argument("-f", "--filename", required=True, metavar="FILE",
                         help="multi-document YAML or JSON; - for standard input")
        etcd_flags(cmd)
    policy = commands.add_parser("policy", help="NetworkPolicy: explain a flow, list objects")
    verbs = policy.add_subparsers(dest="policy_command", required=True, metavar="VERB")
    explain = verbs.add_parser("explain", help="which policies allow or deny a flow")
    explain.add_argument("src", metavar="SRC", help="namespace/pod or an IP address")
    explain.add_argument("dst", metavar="DST", help="namespace/pod or an IP address")
    explain.add_argument("port", metavar="PORT/PROTO", nargs="?", default="80/TCP",
                         help="e.g. 80/TCP, 53/UDP (default 80/TCP)")
    explain.add_argument("--network", help="only this network's allocation records")
    etcd_flags(explain)
    denials = verbs.add_parser("denials", help="flows this node's agent denied, naming both workloads")
    denials.add_argument("--since", metavar="ISO-TIME", help="only records at or after this time")
    denials.add_argument("--state-dir", default=None, help="weftd's --state-dir (default /var/lib/weft)")
    denials.add_argument("--flow-log-dir", default=None,
                         help="weftd's --flow-log-dir (default /var/log/weft/flows): denied flow records")
    denials.add_argument("--network", help="one network (default: every network in the state dir)")
    denials.add_argument("--json", action="store_true")
    listing = verbs.add_parser("list", help="the stored objects")
    listing.add_argument("--json", action="store_true")
    etcd_flags(listing)


def _fail(msg: str, code: int) -> int:
    print(f"weftctl: {msg}", file=sys.stderr)
    return code


def _documents(filename: str) -> list:
    """The file's documents; ValueError naming the file (and line) when unreadable."""
    import yaml

    try:
        if filename == "-":
            text = sys.stdin.read()
        else:
            with open(filename, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise ValueError(f"cannot read {filename}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{filename} is not UTF-8 text: {exc}") from None
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ValueError(f"{filename}{where}: not valid YAML: {reason}") from None


def _parsed(filename: str):
    from ..policy.objects import PolicyError, parse_documents

    documents = _documents(filename)
    if not documents:
        raise ValueError(f"{filename} holds no objects")
    try:
        objects = parse_documents(documents)
    except PolicyError as exc:
        raise ValueError(f"{filename}: {exc}; nothing was stored") from None
    return documents, objects


def apply(args, registry_of) -> int:
    from ..policy.state import object_key

    try:
        documents, objects = _parsed(args.filename)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    keys = [object_key(o) for o in objects]
    seen = set()
    for key in keys:
        if key in seen:
            return _fail(f"{args.filename}: {key[0]} {'/'.join(k for k in key[1:] if k)} appears twice; "
                         "nothing was stored", EXIT_USAGE)
        seen.add(key)
    registry = registry_of(args)
    revision = registry.put_policy_objects([(*key, json.dumps(doc, sort_keys=True))
                                            for key, doc in zip(keys, documents)])
    for kind, namespace, name in keys:
        print(f"{kind.lower()} {'/'.join(p for p in (namespace, name) if p)} stored at "
              f"{registry.policy_key(kind, namespace, name)}")
    print(f"generation {revision}: enforced on a node once `weftctl status` there shows it")
    return EXIT_OK


def delete(args, registry_of) -> int:
    from ..policy.state import object_key

    try:
        _, objects = _parsed(args.filename)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    registry = registry_of(args)
    missing = 0
    for key in (object_key(o) for o in objects):
        kind, namespace, name = key
        ref = "/".join(p for p in (namespace, name) if p)
        if registry.delete_policy_objects([key]):
            print(f"{kind.lower()} {ref} deleted")
        else:
            missing += 1
            print(f"{kind.lower()} {ref} was not stored", file=sys.stderr)
    return EXIT_DENIED if missing else EXIT_OK


def _state(registry, network=None):
    from ..policy.state import PolicyState

    state = PolicyState()
    rows, revision = registry.list_policy_objects()
    state.load_objects(rows, revision)
    state.load_holders(registry.history(network))
    return state


def explain(args, registry_of) -> int:
    from ..policy.objects import PROTOCOLS

    port_text, _, protocol = args.port.partition("/")
    protocol = (protocol or "TCP").upper()
    if not port_text.isdigit() or not is_port(int(port_text)) or protocol not in PROTOCOLS:
        return _fail(f"PORT/PROTO {args.port!r} must be like 80/TCP (protocols {', '.join(PROTOCOLS)})",
                     EXIT_USAGE)
    state = _state(registry_of(args), args.network)
    try:
        src, dst = state.endpoint(args.src), state.endpoint(args.dst)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    verdict = state.cluster().decide(src, dst, protocol, int(port_text))
    word = "ALLOWED" if verdict.allowed else "DENIED"
    print(f"{word}: {src.describe()} -> {dst.describe()} {protocol}/{port_text}")
    for line in verdict.explain():
        print(f"  {line}")
    for suffix, reason in sorted(state.rejected.items()):
        print(f"  note: stored object {suffix} is ignored: {reason}")
    return EXIT_OK if verdict.allowed else EXIT_DENIED


def listing(args, registry_of) -> int:
    state = _state(registry_of(args))
    if args.json:
        print(json.dumps({"generation": state.generation, "objects": sorted(state.objects),
                          "rejected": state.rejected}, indent=2))
        return EXIT_OK
    for suffix in sorted(state.objects):
        print(suffix)
    for suffix, reason in sorted(state.rejected.items()):
        print(f"{suffix} (ignored: {reason})")
    return EXIT_OK


def denials(args, registry_of=None) -> int:
    import os

    from .. import paths
    from ..timestamps import parse_ts

    state_dir = args.state_dir or paths.STATE_DIR
    try:
        since = parse_ts(args.since) if args.since else None
    except ValueError:
        return _fail(f"--since {args.since!r} is not an ISO-8601 time (e.g. 2026-11-22T18:00:00Z)", EXIT_USAGE)
    try:
        networks = [args.network] if args.network else sorted(os.listdir(state_dir))
    except OSError as exc:
        return _fail(f"cannot read {state_dir}: {exc.strerror}; is this weftd's --state-dir?", EXIT_FAILED)
    records = []
    for network in networks:
        path = os.path.join(state_dir, network, "policy-denials.jsonl")
        for name in (path + ".1", path):
            try:
                with open(name, encoding="utf-8", errors="replace") as handle:
                    lines = handle.readlines()
            except OSError:
                continue
            for line in lines:
                try:
                    record = json.loads(line)
                    moment = parse_ts(record["ts"])
                except (ValueError, KeyError, TypeError):
                    continue
                if since is None or moment >= since:
                    records.append((moment, record))
    records += _denied_flow_records(args.flow_log_dir or paths.FLOW_LOG_DIR, args.network, since)
    records.sort(key=lambda item: item[0])
    if args.json:
        print(json.dumps([r for _, r in records], indent=2))
        return EXIT_OK
    for _, r in records:
        if r.get("kind") == "spoofed":
            pod = r.get("srcPod") or f"the pod on {r.get('interface')}"
            print(f"{r['ts']} {r.get('node')} {r.get('network')}: spoofed, dropped: {pod} "
                  f"({', '.join(r.get('podAddresses') or [])}) sent as {r.get('src')}: {r.get('reason')}")
            continue
        if r.get("kind") == "control-plane":
            src = f"{r['srcPod']} ({r['src']})" if r.get("srcPod") else r.get("src")
            print(f"{r['ts']} {r.get('node')} {r.get('network')}: control plane refused {src} -> {r.get('dst')} "
                  f"{r.get('protocol')}/{r.get('port')} ({r.get('target')}; not in ControlPlaneAccess)")
            continue
        src = f"{r['srcPod']} ({r['src']})" if r.get("srcPod") else r.get("src")
        dst = f"{r['dstPod']} ({r['dst']})" if r.get("dstPod") else r.get("dst")
        by = ", ".join(r.get("policies") or []) or "a policy"
        print(f"{r['ts']} {r.get('node')} {r.get('network')}: {r.get('direction')} denied {src} -> {dst} "
              f"{r.get('protocol')}/{r.get('port')} (isolated by {by})")
    return EXIT_OK


def _denied_flow_records(directory, network, since) -> list:
    """The flow journals' denied records (FlowLog on), as (time, denial record)."""
    from ..flows import reader

    out = []
    for r in reader.read([directory]):
        if r.get("verdict") != "denied" or (network and r.get("network") != network):
            continue
        if since is not None and r["_start"] < since:
            continue
        out.append((r["_start"], {"ts": r["start"], "node": r.get("node"), "kind": "policy",
                                  "network": r.get("network"), "direction": r.get("direction"),
                                  "src": r.get("src"), "dst": r.get("dst"), "protocol": str(r.get("proto")).upper(),
                                  "port": r.get("dport"), "srcPod": r.get("srcPod"), "dstPod": r.get("dstPod"),
                                  "policies": r.get("policies") or []}))
    return out


def run(args, registry_of) -> int:
    if args.command == "apply":
        return apply(args, registry_of)
    if args.command == "delete":
        return delete(args, registry_of)
    return {"explain": explain, "list": listing, "denials": denials}[args.policy_command](args, registry_of)
