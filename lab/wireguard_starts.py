"""Fresh 3-node WireGuard clusters started over and over: how long each pod pair takes
to connect, and for any pair slower than --slow, what every node held.

    python -m lab.wireguard_starts --installed DIR --rounds 20 [--stress 2] [--stagger 0.3]
        [--order random] [--etcd-stall 4] [--early] [--out FILE]

Each round is a new Cluster (its own etcd, underlay and node namespaces: what a new
user starts), three agents at the default 10 s reconcile interval, one pod per node,
then every ordered pod pair pings (1 s per try) until it answers or --deadline passes.
wireguard-go runs with LOG_LEVEL=verbose (its log: <run-dir>/wireguard/<dev>.log), so
a slow pair's record carries its handshake story.  --stress N runs `stress-ng --cpu N`
beside the rounds (stopped by its PID).  One JSON line per round goes to --out; the
process exits 1 when a pair missed the deadline.  Bounded: rounds x pairs x deadline.
"""

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .cluster import Cluster, wait_for
from .namespaces import file_tail

WIREGUARD = {"Network": "10.246.0.0/16", "Backend": {"Type": "wireguard"}}
DEV = "weft-wg.51820"


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # a diagnostic must never hide the round's result
        return f"unreadable: {exc!r}"


def snapshot(node) -> dict:
    """What a node holds, for a slow pair (never the private key: no dump/showconf)."""
    status = node.status() or {}
    wg = {}
    for what in ("peers", "endpoints", "allowed-ips", "latest-handshakes", "transfer"):
        wg[what] = _safe(node.wg, "show", DEV, what)
    log = os.path.join(node.run_dir, "wireguard", f"{DEV}.log")
    return {"node": node.name, "ip": node.ip, "ready": status.get("ready"), "lease": status.get("lease"),
            "publicKey": (status.get("wireguard") or {}).get("publicKey"), "peers": status.get("peers"),
            "driftRepaired": status.get("driftRepaired"), "wg": wg,
            "routes": _safe(node.ns.ip, "route", "show"),
            "link": _safe(node.ns.ip, "-d", "link", "show", DEV),
            "weftd_log": file_tail(node.log_path, 60), "wireguard_go_log": file_tail(log, 200)}


def problems(node) -> list:
    """weftd's warnings and errors, and wireguard-go's handshake failures, so far."""
    found = [line[:400] for line in node.log().splitlines() if '"warning"' in line or '"error"' in line]
    log = os.path.join(node.run_dir, "wireguard", f"{DEV}.log")
    found += [line[:300] for line in file_tail(log, 400).splitlines()
              if "invalid" in line or "did not complete" in line or "Failed" in line or "rror" in line]
    return found[:30]


def stall_etcd(cluster, longest: float, record: dict, within: float = 1.0) -> threading.Thread:
    """Stop etcd (SIGSTOP) for a random while (0.5 s to `longest`), starting within
    `within` seconds: a disk that stalls fsync, a member that hangs.  Always continued
    (SIGCONT) by this thread."""
    def run():
        time.sleep(random.uniform(0.0, within))
        pid, pause = cluster.etcd.pid, random.uniform(0.5, longest)
        record["etcd_stall_s"] = round(pause, 2)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(pause)
        finally:
            os.kill(pid, signal.SIGCONT)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def one_round(workdir, installed, stagger: float, order: str, deadline: float, slow: float,
              etcd_stall: float = 0.0, early: bool = False, stall_after_ready: float = 0.0) -> dict:
    cluster = Cluster(workdir, installed, reconcile_interval=10.0)
    record = {"pairs": {}, "slow": [], "failed": []}
    stall = None
    try:
        cluster.set_network("weft", WIREGUARD)
        nodes = [cluster.add_node() for _ in range(3)]
        starting = list(nodes)
        if order == "random":
            random.shuffle(starting)
        elif order == "reverse":
            starting.reverse()
        record["start_order"] = [n.name for n in starting]
        for node in starting:
            node.start_agent()
            if stagger:
                time.sleep(random.uniform(0, stagger))
        if etcd_stall:
            stall = stall_etcd(cluster, etcd_stall, record)
        pods = {}
        for node in starting if early else nodes:  # early: a node's pod as soon as it is ready
            node.wait_ready(timeout=60.0)
            if early:
                pods[node.name] = node.add_pod()
        if stall_after_ready:  # every node says ready: is every node also listening for leases?
            stall = stall_etcd(cluster, stall_after_ready, record, within=0.0)
        pods = [pods[node.name] if early else node.add_pod() for node in nodes]
        for src, dst in itertools.permutations(pods, 2):
            name = f"{src.node.name}->{dst.node.name}"
            started = time.monotonic()
            try:
                wait_for(lambda: src.ping(dst.ip, wait=1), deadline, 0.1, what=name)
                took = time.monotonic() - started
            except TimeoutError:
                took = None
                record["failed"].append(name)
            record["pairs"][name] = None if took is None else round(took, 2)
            if took is None or took > slow:
                record["slow"].append(name)
        if record["slow"]:
            record["nodes"] = [snapshot(node) for node in nodes]
        record["log_problems"] = {node.name: problems(node) for node in nodes}
    finally:
        if stall is not None:
            stall.join()
        cluster.cleanup()
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--installed", required=True, help="weft installed there (bin/, cni/)")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--stagger", type=float, default=0.0, help="random delay up to this between agent starts (s)")
    p.add_argument("--order", choices=("forward", "reverse", "random"), default="forward")
    p.add_argument("--stress", type=int, default=0, help="stress-ng --cpu N beside the rounds")
    p.add_argument("--deadline", type=float, default=12.0)
    p.add_argument("--slow", type=float, default=1.0, help="record every node's state when a pair takes longer")
    p.add_argument("--etcd-stall", type=float, default=0.0,
                   help="stop etcd for 0.5 s up to this many seconds, within 1 s of the agents' start")
    p.add_argument("--early", action="store_true", help="add each node's pod as soon as it is ready")
    p.add_argument("--stall-after-ready", type=float, default=0.0,
                   help="stop etcd for 0.5 s up to this many seconds once every node is ready")
    p.add_argument("--out", default="-")
    args = p.parse_args(argv)
    os.environ["LOG_LEVEL"] = "verbose"  # wireguard-go's, inherited through weftd
    out = sys.stdout if args.out == "-" else open(args.out, "a")
    stress = None
    if args.stress:
        stress = subprocess.Popen(["stress-ng", "--cpu", str(args.stress), "--quiet"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    failed = 0
    try:
        for round_ in range(args.rounds):
            workdir = tempfile.mkdtemp(prefix="weft-wgstart-")
            try:
                record = one_round(os.path.join(workdir, "c"), args.installed, args.stagger, args.order,
                                   args.deadline, args.slow, args.etcd_stall, args.early,
                                   args.stall_after_ready)
            except Exception as exc:  # a round that could not start is a finding too
                record = {"error": repr(exc)[:4000]}
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            record.update({"round": round_, "stress": args.stress, "stagger": args.stagger, "order": args.order,
                           "early": args.early})
            failed += bool(record.get("failed") or record.get("error"))
            out.write(json.dumps(record) + "\n")
            out.flush()
            times = [v for v in record.get("pairs", {}).values() if v is not None]
            print(f"round {round_}: max {max(times) if times else '-'} s"
                  f" slow {record.get('slow')} failed {record.get('failed')} {record.get('error', '')[:200]}",
                  file=sys.stderr, flush=True)
    finally:
        if stress is not None:
            stress.terminate()
            stress.wait(10)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
