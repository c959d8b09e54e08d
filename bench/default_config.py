"""The headline figure: weft as users run it, against the Go chain as flannel deploys it.

  weft  conf/10-weft.conflist (weft + portmap) with only its paths moved under the run's
        directory, called through libcni (build/cnitool, the driver runtimes embed) with
        the `weft` launcher exactly as `make install` writes it, served by a weftd that
        holds a real etcd lease (lab.cluster: etcd on an underlay namespace, the network
        config's defaults, so IPMasq true: the agent's node-wide masquerade table);
  go    bridge (ipMasq false, hairpinMode, isDefaultGateway, MTU 1450) + host-local +
        portmap of CNI plugins 1.9.1 through the same driver: flannel's delegate chain
        (flannel masquerades once per node, not in the chain); the ratios' denominator;
  go-1.1  the same chain from Debian 12's plugins 1.1.1, kept for comparison.
All conflists say cniVersion 1.0.0: the driver's libcni (1.1.2, containerd 1.6's)
refuses a 1.1.0 result, so plugins 1.9.1 cannot be run at 1.1.0 through it.

Each runs in its own node namespace, one attachment at a time, ADD then DEL, the
order of the three contenders rotating per attachment; then a batch of ADDs (and DELs)
by parallel callers, rounds rotating.  Also: weft's own per-step breakdown from its
log (netconf logLevel debug), the forwarder's peak RSS, and the kernel's veth
teardown floor that every DEL pays.

IPv6-only (bench/family.py): every contender again on an IPv6-only network, in the
same rotation: a second node of the cluster whose weftd leases from the network
"weft6" (EnableIPv4 false, fd10:244::/48, /64 per node, masquerade on by default), the
shipped conflist named after it, and the Go chains of plugins 1.9.1 (not 1.1: family.py
kinds_of) with one IPv6 host-local range and a route to its /32.  Its results, in the
same shape, go under "ipv6".
"""

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from lab import cnitool, netns_batch
from lab.cluster import Cluster

from .contenders import reference_plugins
from .context import ensure_dir, percentile, quiesce, ratio, rotate, rss_mib, summary
from .family import NAMES, cluster_route, families, ip_family, kinds_of, network_config, pod_range, slot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFLIST = os.path.join(REPO, "conf", "10-weft.conflist")
NETWORKS = {4: "weft", 6: "weft6"}  # bench/family.py network_config: IPMasq (IPv6Masq) default true
WEFT, GO, GO_11 = "weft", "go", "go-1.1"
WEFT_ALONE, GO_ALONE = "weft-alone", "go-alone"  # the main plugin alone (no portmap): issue 27
REFERENCES = (GO, GO_11)
LABELS = {WEFT: "weft default (agent + etcd lease, masquerade on, libcni)",
          GO: "Go bridge+host-local+portmap 1.9.1, ipMasq false (libcni)",
          GO_11: "the same, plugins 1.1 (libcni)",
          WEFT_ALONE: "weft alone (same agent, no portmap, libcni)",
          GO_ALONE: "Go bridge+host-local 1.9.1 alone (libcni)"}
TEARDOWN_WAIT = 30.0  # seconds at most that a call waits for weft's background teardown to end
FLOOR_RUNS = 20


class _Pod:
    def __init__(self, name):
        self.name, self.path = name, netns_batch.path(name)


def _weft_conflist(node, network: str = "weft") -> dict:
    """The shipped conflist, its paths moved under the node (network: the conflist's name,
    the network whose subnet file it reads)."""
    with open(CONFLIST) as handle:
        conflist = json.load(handle)
    conflist["name"] = network
    weft = conflist["plugins"][0]
    weft.update({"subnetFile": node.subnet_file(network), "agentSocket": os.path.join(node.run_dir, "weftd.sock"),
                 "dataDir": os.path.join(node.dir, "weft"), "logFile": os.path.join(node.dir, "weft.log"),
                 "logLevel": "debug"})
    weft["ipam"] = {**weft["ipam"], "dataDir": node.ipam_dir}
    return conflist


def _go_conflist(work, kind: str, family: int = 4, portmap: bool = True) -> dict:
    """flannel's delegate chain, with the family's range (IPv6-only: one IPv6 /64)."""
    return {"cniVersion": "1.0.0", "name": f"gochain-{kind}", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "isDefaultGateway": True, "ipMasq": False,
         "hairpinMode": True, "mtu": 1450,
         "ipam": {"type": "host-local", "dataDir": os.path.join(work, f"host-local-{kind}"),
                  "ranges": [[{"subnet": pod_range(family, 245, 7)}]],
                  "routes": [{"dst": cluster_route(family, 245)}]}},
        *([{"type": "portmap", "capabilities": {"portMappings": True}}] if portmap else [])]}


def _alone(conflist: dict) -> dict:
    """The conflist with its first plugin only (same network: same agent, store, bridge)."""
    return {**conflist, "plugins": conflist["plugins"][:1]}


def _torn_down(*teardown_dirs: str) -> None:
    """Until weftd's teardown directories are empty (bounded: TEARDOWN_WAIT)."""
    deadline = time.monotonic() + TEARDOWN_WAIT
    while any(os.listdir(d) for d in teardown_dirs if os.path.isdir(d)) and time.monotonic() < deadline:
        time.sleep(0.002)


def _addresses(out) -> list:
    """The pod addresses of a successful ADD's result (cnitool prints it)."""
    try:
        return [ip["address"] for ip in out.json.get("ips", [])]
    except ValueError:  # no result printed: counted as no address
        return []


def _churn(ctx, contender, pods: list, teardown_dir: str) -> dict:
    """ADD latency with and without DELs' background teardown running: pod i is
    DELeted, then pod i+1 ADDed either at once (its teardown runs meanwhile: churn) or
    once weftd's teardown directory is empty (quiet); the two modes alternate."""
    times = {"churn": [], "quiet": []}
    errors = []
    _, out = contender.call("add", pods[0], "churn-0")
    for i in range(1, len(pods)):
        mode = ("churn", "quiet")[i % 2]
        _, out = contender.call("del", pods[i - 1], f"churn-{i - 1}")
        if out.code != 0:
            errors.append(f"del: {out}"[:300])
        if mode == "quiet":
            _torn_down(teardown_dir)
        ms, out = contender.call("add", pods[i], f"churn-{i}")
        (times[mode] if out.code == 0 else errors).append(ms if out.code == 0 else f"add: {out}"[:300])
    contender.call("del", pods[-1], f"churn-{len(pods) - 1}")
    result = {mode: {**summary(values), "p99": round(percentile(values, 99), 2) if values else None}
              for mode, values in times.items()}
    result["p99_ratio"] = ratio(result["churn"]["p99"], result["quiet"]["p99"])
    result["errors"] = len(errors)
    result["error_samples"] = errors[:3]
    return result


class _Contender:
    def __init__(self, kind, driver, network, family: int, node=None):
        self.kind, self.driver, self.network, self.family, self.node = kind, driver, network, family, node

    def call(self, command, pod, cid):
        started = time.perf_counter()
        out = self.driver(command, self.network, pod, ifname="eth0", container_id=cid)
        return (time.perf_counter() - started) * 1000.0, out


def _steps(log_path: str, prefix: str) -> dict:
    """Median milliseconds per handler step (weft's log, logLevel debug) for ADD and DEL."""
    per = {}
    try:
        lines = open(log_path).read().splitlines()
    except OSError:
        return {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not str(entry.get("containerID", "")).startswith(prefix) or entry.get("exit") != 0:
            continue
        command = entry.get("command", "").lower()
        bucket = per.setdefault(command, {"handler": []})
        bucket["handler"].append(entry.get("ms", 0.0))
        for step, ms in (entry.get("steps") or {}).items():
            bucket.setdefault(step, []).append(ms)
    return {command: {step: summary(values)["p50"] for step, values in steps.items()}
            for command, steps in per.items()}


BUSYBOX = "/bin/busybox"  # busybox-static (scripts/deps.sh)
RSS_RUNS = 5


def _peak_rss_mib(argv, env, stdin: bytes):
    """Peak RSS of one process as `busybox time -v` sees it (wait4's ru_maxrss).

    Measured from busybox, not from this Python process: a child forked from a 40 MiB
    Python inherits that process's high-water mark on exec and would report it.
    busybox 1.35 prints ru_maxrss multiplied by 4 (it takes the kilobytes for 4 KiB
    pages); the value is divided back.  None when busybox is missing."""
    if not os.path.exists(BUSYBOX):
        return None
    proc = subprocess.run([BUSYBOX, "time", "-v", *argv], input=stdin, env=env, capture_output=True, timeout=60)
    for line in proc.stderr.decode(errors="replace").splitlines():
        if "Maximum resident set size" in line:
            return round(int(line.rsplit(":", 1)[1]) / 4 / 1024.0, 2)
    return None


def _forwarder_rss(ctx, node, conflist) -> dict:
    """The installed launcher as a runtime starts it: VERSION with the default netconf,
    forwarded to the agent over its socket (the forwarder does no kernel work, so it
    runs in this namespace: nothing is changed anywhere), and without an agent
    (standalone: the handlers' table stays unloaded for VERSION).  Max of RSS_RUNS."""
    exe = os.path.join(ctx.installed, "cni", "weft")
    conf = {**conflist["plugins"][0], "cniVersion": conflist["cniVersion"], "name": conflist["name"]}
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "VERSION", "CNI_PATH": os.path.join(ctx.installed, "cni")}
    out = {}
    for label, sock in (("version_via_agent", conf["agentSocket"]),
                        ("version_standalone", os.path.join(node.dir, "nobody-listens.sock"))):
        values = [_peak_rss_mib([exe], env, json.dumps({**conf, "agentSocket": sock}).encode())
                  for _ in range(RSS_RUNS)]
        out[label] = max(values) if None not in values else None
    out["method"] = "busybox time -v (ru_maxrss / 4), max of %d runs" % RSS_RUNS
    return out


def _veth_floor(ctx, node_name: str) -> dict:
    """What the kernel alone costs: `ip` creating and deleting a veth pair in a node
    namespace, minus an `ip` call that does nothing (its exec)."""
    adds, dels, idle = [], [], []
    for i in range(FLOOR_RUNS):
        for argv, bucket in ((["ip", "-n", node_name, "link", "show", "lo"], idle),
                             (["ip", "-n", node_name, "link", "add", "flr0", "type", "veth", "peer", "name",
                               "flr1"], adds),
                             (["ip", "-n", node_name, "link", "del", "flr0"], dels)):
            started = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True, timeout=30)
            bucket.append((time.perf_counter() - started) * 1000.0)
    base = summary(idle)["p50"]
    return {"ip_exec_ms": base, "veth_add_ms": round(summary(adds)["p50"] - base, 2),
            "veth_del_ms": round(summary(dels)["p50"] - base, 2)}


def _weft_node(ctx, cluster, work, exe, family: int) -> tuple:
    """A node of the cluster whose weftd holds a lease of the family's network; its weft
    contenders (the shipped conflist, and its first plugin alone)."""
    network = NETWORKS[family]
    node = cluster.add_node()
    node.start_agent(networks=(network,))
    node.wait_ready(network)
    ctx.record(cluster.namespace_names())
    # weft's chain runs the headline release's portmap
    tag = "" if family == 4 else f"-ipv{family}"
    driver = cnitool.Driver(exe, node.ns, os.path.join(work, f"weft-driver{tag}"),
                            f"{ctx.installed}/cni:{reference_plugins(GO)}")
    conflist = _weft_conflist(node, network)
    driver.write(conflist)
    alone_driver = cnitool.Driver(exe, node.ns, os.path.join(work, f"weft-alone-driver{tag}"), f"{ctx.installed}/cni")
    alone_driver.write(_alone(conflist))
    return node, conflist, [_Contender(WEFT, driver, network, family, node),
                            _Contender(WEFT_ALONE, alone_driver, network, family, node)]


def _go_contenders(ctx, exe, work, family: int, go_nodes: dict) -> list:
    made = []
    for kind in kinds_of((*REFERENCES, GO_ALONE), family):
        tag = f"{kind}{'' if family == 4 else f'-ipv{family}'}"
        go_nodes[tag] = ctx.namespace(f"wbd{family}{kind[0]}{kind[-1]}")
        plugins = reference_plugins(GO if kind == GO_ALONE else kind)
        driver = cnitool.Driver(exe, go_nodes[tag], os.path.join(work, f"{tag}-driver"), plugins)
        driver.write(_go_conflist(work, tag, family, portmap=kind != GO_ALONE))
        made.append(_Contender(kind, driver, f"gochain-{tag}", family))
    return made


def _ratios(out: dict) -> None:
    """weft / Go per p50 and batch wall, into one family's results."""
    for mine, ref, tail in ((WEFT, GO, ""), (WEFT, GO_11, "_vs_1_1"),  # against 1.9.1: the headline
                            (WEFT_ALONE, GO_ALONE, "_alone")):
        if ref not in out:  # plugins 1.1 on IPv4 only (bench/family.py kinds_of)
            continue
        for key in ("add_ms", "del_ms"):
            out[f"{key}_p50_ratio{tail}"] = ratio(out[mine][key]["p50"], out[ref][key]["p50"])
        for key in ("add_wall_s", "del_wall_s"):
            out[f"{key}_ratio{tail}"] = ratio(out[mine][key], out[ref][key])


def default_config(ctx, attachments: int, adds: int, workers: int, rounds: int) -> dict:
    fams = families(ctx)
    ctx.say(f"default config: {attachments} ADD+DEL per contender through libcni, then {adds} ADDs by "
            f"{workers} callers x {rounds} rounds; {' and '.join(NAMES[f] for f in fams)}")
    exe = cnitool.build()
    work = ensure_dir(os.path.join(ctx.work, "default"))
    cluster = Cluster(os.path.join(work, "cluster"), ctx.installed, reconcile_interval=10.0)
    go_nodes = {}
    pods = []
    try:
        contenders, weft_nodes = [], {}
        for family in fams:
            cluster.set_network(NETWORKS[family], network_config(family, vni=family))
            node, conflist, made = _weft_node(ctx, cluster, work, exe, family)
            weft_nodes[family] = (node, conflist)
            contenders += made + _go_contenders(ctx, exe, work, family, go_nodes)
        count = attachments + adds + 2  # the churn figure reuses the sequential pods
        pod_of = {}
        for c in contenders:
            names = ctx.pod_namespaces(f"wbd{c.family}{c.kind[0]}{c.kind[-1]}", count)
            pods += names
            pod_of[c] = [_Pod(n) for n in names]
        for c in contenders:  # warm-up: bridge, caches, the agent's code paths
            for command in ("add", "del"):
                _, out = c.call(command, pod_of[c][-1], f"warm-{c.kind}")
                if out.code != 0:
                    raise RuntimeError(f"{LABELS[c.kind]} ({NAMES[c.family]}) warm-up {command} failed: {out}")
        times = {c: {"add": [], "del": []} for c in contenders}
        errors = {c: [] for c in contenders}
        ips = {c: [] for c in contenders}
        teardown_dirs = [os.path.join(node.dir, "weft", "teardown") for node, _ in weft_nodes.values()]
        quiesce(ctx)
        for i in range(attachments):
            for c in rotate(contenders, i):
                for command in ("add", "del"):
                    ms, out = c.call(command, pod_of[c][i], f"seq-{c.kind}-{i}")
                    (times[c][command] if out.code == 0 else errors[c]).append(
                        ms if out.code == 0 else f"{command}: {out}"[:300])
                    if command == "add" and out.code == 0:
                        ips[c] += _addresses(out)
                # the next contender starts once weft's background teardown ended: its work
                # does not land on another's calls (the churn row measures what it costs)
                _torn_down(*teardown_dirs)
        ctx.say("default config: sequential done")
        walls = {c: {"add": [], "del": []} for c in contenders}
        batch = {c: pod_of[c][attachments:attachments + adds] for c in contenders}
        for r in range(rounds):
            quiesce(ctx)
            for c in rotate(contenders, r):
                cids = [f"par{r}-{c.kind}-{i}" for i in range(adds)]
                for command in ("add", "del"):
                    started = time.perf_counter()
                    with ThreadPoolExecutor(max_workers=workers) as pool:
                        outs = list(pool.map(lambda item: c.call(command, *item), zip(batch[c], cids)))
                    walls[c][command].append(round(time.perf_counter() - started, 3))
                    errors[c] += [f"parallel {command}: {o}"[:300] for _, o in outs if o.code != 0]
                _torn_down(*teardown_dirs)  # weft's background work ends before the next batch
            ctx.say(f"default config parallel round {r + 1}: "
                    + ", ".join(f"{c.kind}/{NAMES[c.family]} {walls[c]['add'][-1]:.2f}s" for c in contenders))
        result = {"attachments": attachments, "adds": adds, "workers": workers, "rounds": rounds}
        for c in contenders:
            add, delete = summary(times[c]["add"]), summary(times[c]["del"])
            slot(result, c.family)[c.kind] = {
                "add_ms": add, "del_ms": delete,
                "add_wall_s": sorted(walls[c]["add"])[len(walls[c]["add"]) // 2],
                "del_wall_s": sorted(walls[c]["del"])[len(walls[c]["del"]) // 2],
                "add_walls_s": walls[c]["add"], "del_walls_s": walls[c]["del"],
                "errors": len(errors[c]), "error_samples": errors[c][:3], "distinct_ips": len(set(ips[c])),
                "families": sorted({ip_family(ip) for ip in ips[c]})}
        for family, (node, conflist) in weft_nodes.items():
            out = slot(result, family)
            quiesce(ctx)
            weft = next(c for c in contenders if c.kind == WEFT and c.family == family)
            out["churn"] = _churn(ctx, weft, pod_of[weft][:attachments], os.path.join(node.dir, "weft", "teardown"))
            ctx.say(f"default config: churn on {NAMES[family]} done (ADD p99 {out['churn']['churn']['p99']} ms "
                    f"with teardown running, {out['churn']['quiet']['p99']} ms without)")
            out["labels"] = LABELS
            out["masquerade_table"] = node.status(NETWORKS[family]).get("masquerade")
            _ratios(out)
            out[WEFT]["steps_p50_ms"] = _steps(os.path.join(node.dir, "weft.log"), "seq-")
            out[WEFT]["agent_rss_mib"] = rss_mib(node.agent.pid)
        first = fams[0]
        node, conflist = weft_nodes[first]
        slot(result, first)[WEFT]["forwarder_peak_rss_mib"] = _forwarder_rss(ctx, node, conflist)
        result["kernel_floor"] = _veth_floor(ctx, go_nodes[GO if first == 4 else f"{GO}-ipv{first}"].name)
        return result
    finally:
        cluster.cleanup()
        ctx.release([n.name for n in go_nodes.values()])
        ctx.release(pods)
