"""weftctl: the operator CLI.

  weftctl network set NAME --config FILE|JSON [--force-migrate]
                                                  validate and store a network config in etcd
  weftctl network get NAME                        print it
  weftctl leases [NETWORK] [--ttl]                every node's lease (--ttl: and its time left)
  weftctl status [--run-dir DIR]                  this node's agent: lease, peers, drift
  weftctl whois IP [--at TIME] [--cluster]        who held an address (this node, or all)
  weftctl graph [NETWORK] [--ipam-data-dir DIR]   the cluster as an SVG (nodes, subnets, VTEPs, pods)
  weftctl apply|delete -f FILE                    NetworkPolicy/Namespace/Pod objects (policy_cmds.py)
  weftctl policy explain SRC DST [PORT/PROTO]     which policies allow or deny a flow
  weftctl flows [--dir DIR]... [filters] [--json] [--per-node] [--follow]
                                                  flow records, merged across nodes (flows_cmds.py)
  weftctl install-conflist SRC DEST [--cni-bin-dir DIR] [--cni-version auto|V] [--runtime NAME://V]
                                                  write a conflist with the cniVersion the node's
                                                  plugins and runtime support (install_conflist.py)
"""

import argparse
import concurrent.futures
import ipaddress
import json
import os
import sys

from .. import paths
from ..ipam import history
from ..subnet.registry import RegistryError
from .. import etcd_flags
from . import flows_cmds, graph, install_conflist, policy_cmds

DEFAULT_DATA_DIR = paths.IPAM_DATA_DIR

EXIT_OK, EXIT_NO_HOLDER, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by SIGINT


def _etcd_flags(parser):
    etcd_flags.add(parser, endpoints_env="WEFT_ETCD_ENDPOINTS", title="etcd")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weftctl", description="Operate a weft cluster and node.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    network = commands.add_parser("network", help="network configs in etcd")
    network_cmds = network.add_subparsers(dest="action", required=True, metavar="ACTION")
    net_set = network_cmds.add_parser("set", help="validate and store a network config")
    net_set.add_argument("name")
    net_set.add_argument("--config", required=True, help="a JSON file, or the JSON itself")
    net_set.add_argument("--force-migrate", action="store_true",
                         help="store a config that live leases contradict (other Network, SubnetLen, "
                              "backend type or VNI) and delete those leases; their agents stop being "
                              "ready until restarted, then lease under the new config")
    _etcd_flags(net_set)
    net_get = network_cmds.add_parser("get", help="print a network config")
    net_get.add_argument("name")
    _etcd_flags(net_get)

    leases = commands.add_parser("leases", help="every node's subnet lease")
    leases.add_argument("network", nargs="?")
    leases.add_argument("--json", action="store_true")
    leases.add_argument("--ttl", action="store_true",
                        help="also read each lease's seconds left from etcd (one request per lease, "
                             "all in flight at once)")
    _etcd_flags(leases)

    status = commands.add_parser("status", help="this node's agent status")
    status.add_argument("--run-dir", default=paths.RUN_DIR)
    status.add_argument("--json", action="store_true")
    status.add_argument("--cluster", action="store_true",
                        help="every node's NetworkPolicy generation, from etcd (not this node's files)")
    _etcd_flags(status)

    whois = commands.add_parser("whois", help="who holds (or held) an IP address")
    whois.add_argument("ip", metavar="IP")
    whois.add_argument("--at", metavar="ISO-TIME", help="when, ISO-8601; no zone means UTC (default: now)")
    whois.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                       help=f"this node's weft-ipam dataDir (default {DEFAULT_DATA_DIR})")
    whois.add_argument("--cluster", action="store_true",
                       help="answer from the history every weftd publishes to etcd")
    whois.add_argument("--json", action="store_true", help="print JSON")
    _etcd_flags(whois)
    graph.add_parser(commands, _etcd_flags)
    policy_cmds.add_parsers(commands, _etcd_flags)
    flows_cmds.add_parser(commands)
    install_conflist.add_parser(commands)
    return parser


def _fail(msg: str, code: int = EXIT_FAILED) -> int:
    print(f"weftctl: {msg}", file=sys.stderr)
    return code


_OPEN = []  # the registries this run opened, closed when the command ends


def _registry(args):
    registry = etcd_flags.registry(args)
    _OPEN.append(registry)
    return registry


# -- network -----------------------------------------------------------------

def _read_config_arg(value: str) -> str:
    if value.lstrip().startswith("{"):
        return value
    with open(value) as handle:
        return handle.read()


def network(args) -> int:
    from ..subnet.lease import ConfigError, NetworkConfig

    registry = _registry(args)
    if args.action == "get":
        text = registry.get_network_config(args.name)
        if text is None:
            return _fail(f"network {args.name} has no config at {registry.config_key(args.name)}", EXIT_NO_HOLDER)
        print(text)
        return EXIT_OK
    try:
        text = _read_config_arg(args.config)
    except OSError as exc:
        return _fail(f"cannot read --config {args.config}: {exc.strerror}", EXIT_USAGE)
    try:
        config = NetworkConfig.parse(args.name, text)
    except ConfigError as exc:
        return _fail(f"config refused: {exc}", EXIT_USAGE)
    for other in registry.network_names():
        if other == args.name:
            continue
        try:
            theirs = NetworkConfig.parse(other, registry.get_network_config(other) or "{}")
        except ConfigError:
            continue
        clash = config.backend_type == theirs.backend_type and \
            config.backend_class.config_clash(config.backend, theirs.backend, other)
        if clash:
            return _fail(f"config refused: {clash}", EXIT_USAGE)
        for mine in config.networks:  # either family (an IPv6-only network has no Network)
            for their in theirs.networks:
                if mine.version == their.version and mine.overlaps(their):
                    key = "Network" if mine.version == 4 else "IPv6Network"
                    return _fail(f"config refused: {key} {mine} overlaps network {other}'s {their}", EXIT_USAGE)
    return _store_config(registry, args, config)


def _store_config(registry, args, config) -> int:
    """Refuse a config the network's leases contradict, unless --force-migrate (then the
    contradicting leases are deleted once the config is stored)."""
    from ..subnet import validation
    from ..subnet.lease import ConfigError, NetworkConfig

    old = None
    text = registry.get_network_config(args.name)
    if text is not None:
        try:
            old = NetworkConfig.parse(args.name, text)
        except ConfigError:
            old = None  # an unusable config protects no lease
    rows, _ = registry.list_leases(args.name)
    victims = validation.contradicted(old, config, rows)
    listing = "".join(f"\n  {r.key} (node {r.node or '?'}): {r.detail}" for r in victims)
    if victims and not args.force_migrate:
        return _fail(f"config refused: {len(victims)} live lease(s) of network {args.name} contradict it:"
                     f"{listing}\nchange it back, or pass --force-migrate to store it and delete these "
                     "leases (their agents then report the change and lease again when restarted)",
                     EXIT_USAGE)
    registry.put_network_config(args.name, json.dumps(config.raw, sort_keys=True))
    print(f"network {args.name} stored at {registry.config_key(args.name)}")
    for refusal in victims:
        registry.delete_lease_key(args.name, refusal.key)
        print(f"deleted lease {refusal.key} of node {refusal.node or '?'} (--force-migrate): {refusal.detail}")
    if old is not None:
        live, restart = validation.config_change(old, config)
        if restart:
            print(f"agents serving {args.name} keep their running config until restarted "
                  f"({'; '.join(restart)})")
        elif live:
            print(f"agents apply it live: {'; '.join(live)}")
    return EXIT_OK


# -- leases --------------------------------------------------------------------

def _parse_leases(listings: dict) -> list:
    """[(network, key, lease id, Lease or None, error or None)] of every listed row."""
    from ..subnet.lease import ConfigError, Lease

    parsed = []
    for name, raw in listings.items():
        for key, value, lease_id, _ in raw:
            try:
                parsed.append((name, key, lease_id, Lease.from_json(key, value), None))
            except ConfigError as exc:
                parsed.append((name, key, lease_id, None, str(exc)))
    return parsed


def leases(args) -> int:
    registry = _registry(args)
    names = [args.network] if args.network else registry.network_names()
    rows = []
    listings = {name: registry.list_leases(name)[0] for name in names}
    ttls = {}
    if args.ttl:
        # etcd has no call for many leases' TTLs: one request per lease, all in one round,
        # on a thread while the rows are parsed here (most of the round is etcd's answers)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            ttl_round = pool.submit(registry.lease_ttls, [row[2] for raw in listings.values() for row in raw])
            parsed = _parse_leases(listings)
            ttls = ttl_round.result()
    else:
        parsed = _parse_leases(listings)
    for name, key, lease_id, lease, error in parsed:
        if error is not None:
            rows.append({"network": name, "subnet": key, "error": error})
            continue
        row = {"network": name, "subnet": str(lease.key_subnet), "node": lease.node_name,
               "nodeID": lease.node_id or None,
               "publicIP": lease.public_ip and str(lease.public_ip),
               "publicIPv6": lease.public_ipv6 and str(lease.public_ipv6), "vtepMAC": lease.vtep_mac,
               "ipv6Subnet": str(lease.ipv6_subnet) if lease.ipv6_subnet else None,
               "leaseID": lease_id,
               "backendType": lease.backend_type, "lease": lease}
        if args.ttl:
            row["ttl"] = ttls.get(lease_id, -1) if lease_id else None
        rows.append(row)
    for row in rows:  # only --json prints it: re-encoding 5,000 leases is a tenth of a second
        lease = row.pop("lease", None)
        if args.json and lease is not None:
            row["backendData"] = json.loads(lease.to_json())["BackendData"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    last = "TTL" if args.ttl else "LEASE"
    wide = max([18] + [len(row["subnet"]) for row in rows])  # an IPv6-only network's subnets are longer
    print(f"{'NETWORK':12} {'SUBNET':{wide}} {'NODE':16} {'PUBLIC IP':16} {'VTEP MAC':18} {last}")
    for row in rows:
        if "error" in row:
            print(f"{row['network']:12} {row['subnet']:{wide}} unreadable: {row['error']}")
            continue
        if not row["leaseID"]:
            held = "reservation"
        else:
            held = f"{row['ttl']}s" if args.ttl else f"{row['leaseID']:016x}"  # as etcdctl shows ids
        print(f"{row['network']:12} {row['subnet']:{wide}} {row['node']:16} {_underlay(row):16} "
              f"{row['vtepMAC'] or '-':18} {held}")
    return EXIT_OK


# -- status --------------------------------------------------------------------

def _underlay(row: dict) -> str:
    """A lease row's underlay addresses: "192.0.2.1", "2001:db8::1" or both, comma-separated."""
    return ",".join(a for a in (row.get("publicIP"), row.get("publicIPv6")) if a) or "-"


def _cluster_status(args) -> int:
    from ..policy.state import PolicyState

    registry = _registry(args)
    stored = PolicyState()
    stored.load_objects(*registry.list_policy_objects())
    current = stored.digest()
    rows = []
    for network in registry.network_names():
        for node, text in sorted(registry.policy_statuses(network).items()):
            try:
                state = json.loads(text)
            except ValueError:
                state = {}
            rows.append({"network": network, "node": node, **state})
    behind = [r for r in rows if r.get("objects") != current]
    if args.json:
        print(json.dumps({"objects": current, "nodes": rows}, indent=2))
        return EXIT_OK if not behind else EXIT_NO_HOLDER
    print(f"policy objects in etcd: {len(stored.texts)} (digest {current}); "
          + ("every node enforces them" if not behind else f"{len(behind)} node(s) behind"))
    for r in rows:
        word = "current" if r.get("objects") == current else "BEHIND"
        print(f"  {r['network']} {r['node']}: {word}, generation {r.get('generation')}, {r.get('policies')} "
              f"policies, {r.get('rules')} rules, {r.get('state')} (at {r.get('ts')})")
    return EXIT_OK if not behind else EXIT_NO_HOLDER


def status(args) -> int:
    from ..subnet import status_file

    if args.cluster:
        return _cluster_status(args)
    try:
        names = sorted(n for n in os.listdir(args.run_dir) if n.endswith(".status.json"))
    except OSError as exc:
        return _fail(f"no agent status in {args.run_dir}: {exc.strerror}; is weftd running "
                     "with this --run-dir?")
    states = [s for s in (status_file.read(os.path.join(args.run_dir, n)) for n in names) if s]
    if not states:
        return _fail(f"no agent status in {args.run_dir}; is weftd running with this --run-dir?")
    if args.json:
        print(json.dumps(states, indent=2))
    for state in [] if args.json else states:
        lease = state.get("lease") or {}
        word = "ready" if state.get("ready") else "NOT READY"
        print(f"network {state['network']} on node {state['node']}: {word}")
        subnets = " ".join(s for s in (lease.get("subnet"), lease.get("ipv6Subnet")) if s) or "-"
        print(f"  lease      {subnets} (public IP {_underlay(lease)}, "
              f"VTEP MAC {lease.get('vtepMAC') or '-'})")
        if state.get("nodeID"):
            print(f"  node ID    {state['nodeID']}")
        if state.get("problem"):
            print(f"  problem    {state['problem']}")
        for key, problem in sorted((state.get("configProblems") or {}).items()):  # reported, still ready
            print(f"  config     {key} not honoured on this node: {problem}")
        if state.get("unpublished"):
            print(f"  unpublished {state['unpublished']}")
        if state.get("fatal"):
            print(f"  FATAL      {state['fatal']}")
        elif state.get("conflict"):
            print(f"  CONFLICT   {state['conflict']}")
        wireguard = state.get("wireguard")
        if wireguard:
            print(f"  wireguard  {wireguard.get('device')} ({wireguard.get('implementation') or 'not set up'}), "
                  f"port {wireguard.get('listenPort')}, public key {wireguard.get('publicKey') or '-'}")
            if wireguard.get("deviceProblem"):
                print(f"             {wireguard['deviceProblem']}")
        print(f"  peers      {len(state.get('peers') or [])} programmed")
        for peer in state.get("peers") or []:
            print(f"             {peer}")
        refused = state.get("refused") or []
        if refused:
            print(f"  REFUSED    {len(refused)} lease(s) not programmed (lease conflicts, no common "
                  "underlay family)")
        for item in refused:
            print(f"             {item.get('key')} {item.get('node') or '?'} [{item.get('reason')}]: "
                  f"{item.get('detail')}")
        for gap in state.get("partlyRouted") or []:
            print(f"  PARTLY     {gap}")
        print(f"  drift      {state.get('driftRepaired', 0)} kernel entries repaired since start")
        flows = state.get("flows")
        if flows:
            dropped = ", ".join(f"{k} {v}" for k, v in sorted((flows.get("dropped") or {}).items())) or "none"
            print(f"  flows      {flows.get('setting')}: {flows.get('written', 0)} records into "
                  f"{flows.get('journal') or '-'}; dropped {dropped}; events lost {flows.get('eventsLost', 0)}")
            for problem in (flows.get("problem"), flows.get("journalError"), (flows.get("ipfix") or {}).get("error")):
                if problem and problem not in (state.get("configProblems") or {}).values():  # shown above
                    print(f"             {problem}")
        masq = state.get("masquerade") or {}
        if masq:
            print(f"  masquerade {masq.get('table')}: {masq.get('state')}, "
                  f"{masq.get('driftRepaired', 0)} repairs since start")
        sources = state.get("sourceValidation") or {}
        if sources:
            exempt = sources.get("exempt", 0)
            names = ", ".join(sources.get("exemptPods") or [])
            print(f"  sources    {sources.get('table')}: {sources.get('state')}, {sources.get('ports', 0)} pod "
                  f"interface(s) validated, {exempt} exempt (netconf allowSpoofing: true)"
                  f"{': ' + names if names else ''}; {sources.get('spoofedPackets', 0)} spoofed packets dropped, "
                  f"{sources.get('driftRepaired', 0)} repairs since start")
            for problem in sources.get("recordProblems") or []:
                print(f"             {problem}")
        guard = state.get("controlPlane") or {}
        if guard:
            excepted = ", ".join(e.get("pod", "?") for e in guard.get("excepted") or []) or "none"
            print(f"  control    {guard.get('table')}: {guard.get('state')}, "
                  f"{len(guard.get('endpoints') or [])} etcd endpoint(s), "
                  f"{guard.get('refused', 0)} packets refused, {guard.get('driftRepaired', 0)} repairs "
                  f"since start; let through: {excepted}")
        policy = state.get("policy") or {}
        if policy.get("source") not in (None, "none"):
            print(f"  policy     generation {policy.get('generation')}: {policy.get('policies')} policies, "
                  f"{policy.get('localPods')} local pods, {policy.get('rules')} rules in {policy.get('table')}; "
                  f"{policy.get('state')}")
            if policy.get("watchErrors"):
                print("             Kubernetes watch problems: " + ", ".join(
                    f"{count} {reason}" for reason, count in sorted(policy["watchErrors"].items())))
    return EXIT_OK if all(s.get("ready") for s in states) else EXIT_NO_HOLDER


# -- whois ----------------------------------------------------------------------

def _short_ts(moment) -> str:
    layout = "%Y-%m-%dT%H:%M:%S.%fZ" if moment.microsecond else "%Y-%m-%dT%H:%M:%SZ"
    return moment.strftime(layout)


def _holder_line(record: dict) -> str:
    namespace, name = record.get("podNamespace"), record.get("podName")
    pod = f"{namespace}/{name}" if namespace and name else "an unknown pod"
    since = _short_ts(history.parse_ts(record["ts"]).replace(microsecond=0))
    node = f" node {record['node']}" if record.get("node") else ""
    return (f"{record['ip']} held by {pod} (container {record.get('containerID')}, "
            f"{record.get('ifname')}) on network {record.get('network')}{node} since {since}")


def whois(args) -> int:
    try:
        ip = ipaddress.ip_address(args.ip)
    except ValueError:
        return _fail(f"{args.ip!r} is not an IP address", EXIT_USAGE)
    try:
        at = history.parse_ts(args.at) if args.at is not None else None
    except ValueError:
        return _fail(f"--at {args.at!r} is not an ISO-8601 time (e.g. 2026-11-22T18:00:00Z)", EXIT_USAGE)
    if args.cluster:
        holders = history.holders(history.parsed(_registry(args).history()), ip, at)
    else:
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


COMMANDS = {"network": network, "leases": leases, "status": status, "whois": whois,
            "graph": lambda args: graph.run(args, _registry), "install-conflist": install_conflist.run,
            "flows": flows_cmds.run,
            **{verb: (lambda args: policy_cmds.run(args, _registry)) for verb in ("apply", "delete", "policy")}}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RegistryError as exc:  # one line, no traceback
        return _fail(str(exc))
    except KeyboardInterrupt:  # Ctrl-C: a blocked etcd call is abandoned, not waited for
        return _fail("interrupted", EXIT_INTERRUPTED)
    finally:
        while _OPEN:
            _OPEN.pop().close()


if __name__ == "__main__":
    sys.exit(main())
