"""`make bench`: weft against the reference Go plugins (1.9.1, and 1.1 beside them), one run, every figure.

    python -m bench.run [--attachments 200] [--smoke] [--out bench-results] [--only a,b] [--family both]
                        [--docs DIR]

Writes <out>/<UTC timestamp>.json and <out>/latest.json, prints the tables (Markdown)
on stdout and rewrites the tables of the figures it ran in docs/ (bench/doc_tables.py);
progress goes to stderr.  Needs root: everything happens in
network namespaces made for the run, all removed at the end (also on Ctrl-C).
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from . import (attach, convergence, cri, default_config, doc_tables, flows, ipv6_underlay, policy, report, scale,
               source_validation, throughput, wireguard)
from .contenders import LABELS
from .context import Context, quiesce
from .family import FAMILIES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = ("default", "sequential", "parallel", "density", "throughput", "source-validation",
           "wireguard", "ipv6-underlay", "convergence", "cri", "policy", "flows", "scale")
SMOKE = {"attachments": 10, "parallel": 10, "workers": 8, "parallel_rounds": 2, "prepopulate": 20, "measure": 5,
         "iperf_seconds": 1, "iperf_rounds": 1, "nodes": 3, "leases": 2, "sandboxes": 2,
         "policy_pods": 40, "policy_count": 10, "policy_changes": 3, "policy_adds": 3,
         "scale_nodes": "10", "scale_wireguard_nodes": "10", "scale_churn": 6, "scale_quiet": 2.0,
         "sv_rounds": 1, "sv_seconds": 1.0, "sv_adds": 2,
         "flow_rounds": 1, "flow_seconds": 1.0, "flow_preload": 1.0, "flow_ipfix": 2000}


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--attachments", type=int, default=200, help="sequential ADDs+DELs per contender (default 200)")
    p.add_argument("--parallel", type=int, default=100, help="ADDs in the parallel batch (default 100)")
    p.add_argument("--workers", type=int, default=8, help="parallel callers (default 8)")
    p.add_argument("--parallel-rounds", type=int, default=3,
                   help="batches per contender, median reported (standalone: 1) (default 3)")
    p.add_argument("--prepopulate", type=int, default=250, help="attachments present for the scale figure")
    p.add_argument("--measure", type=int, default=30, help="ADD+DEL pairs measured at 0 and at --prepopulate")
    p.add_argument("--iperf-seconds", type=int, default=5)
    p.add_argument("--iperf-rounds", type=int, default=3)
    p.add_argument("--sv-rounds", type=int, default=7,
                   help="source-validation figure: rounds, each measuring validation on and off (default 7)")
    p.add_argument("--sv-seconds", type=float, default=2.0,
                   help="source-validation figure: seconds of each connection-rate and iperf3 run (default 2)")
    p.add_argument("--sv-adds", type=int, default=4,
                   help="source-validation figure: ADD+DEL pairs per side per round (default 4)")
    p.add_argument("--flow-rounds", type=int, default=5,
                   help="flows figure: rounds, each measuring FlowLog on and off (default 5)")
    p.add_argument("--flow-seconds", type=float, default=3.0,
                   help="flows figure: seconds of each connection-rate run (default 3)")
    p.add_argument("--flow-preload", type=float, default=10.0,
                   help="flows figure: seconds of the same loop, unmeasured, before each measured run: the "
                        "DESTROY events of its connections arrive during the measured one (default 10)")
    p.add_argument("--flow-ipfix", type=int, default=100000,
                   help="flows figure: connections exported as IPFIX for its rate (default 100000)")
    p.add_argument("--nodes", type=int, default=20, help="nodes of the convergence cluster (default 20)")
    p.add_argument("--leases", type=int, default=5, help="synthetic leases added and removed (default 5)")
    p.add_argument("--sandboxes", type=int, default=30,
                   help="RunPodSandbox calls per CRI runtime handler (weft with weftd, weft standalone, "
                        "reference) and containerd release (1.6, 2.1), on an empty node and again with pods up "
                        "(default 30)")
    p.add_argument("--policy-pods", type=int, default=1000, help="synthetic pods of the policy figure")
    p.add_argument("--policy-count", type=int, default=200, help="NetworkPolicies of the policy figure")
    p.add_argument("--policy-changes", type=int, default=20, help="policy changes timed to enforcement")
    p.add_argument("--policy-adds", type=int, default=20, help="ADD+DEL pairs with and without the policies")
    p.add_argument("--scale-nodes", default="100,1000,5000",
                   help="cluster sizes N of the scale figure: N leases in etcd, a few real agents (default 100,1000,5000)")
    p.add_argument("--scale-wireguard-nodes", default="1000",
                   help="cluster sizes N of the scale figure's wireguard run (peers read every pass; "
                        "default 1000, empty: none)")
    p.add_argument("--scale-agents", type=int, default=2, help="real agents in the scale figure (default 2)")
    p.add_argument("--scale-churn", type=int, default=200,
                   help="lease changes (adds and removes alternating) at 20/s per N (default 200)")
    p.add_argument("--scale-quiet", type=float, default=60.0,
                   help="seconds of a quiet cluster measured per N: reconcile CPU, etcd requests (default 60: CPU is counted in 10 ms ticks)")
    p.add_argument("--family", choices=sorted(FAMILIES), default="both",
                   help="the per-pod figures (default, sequential, parallel, cri) on an IPv4 network, an IPv6-only "
                        "one, or both, every contender of both taking turns in one run (default both; "
                        "bench/family.py)")
    p.add_argument("--smoke", action="store_true", help="tiny counts everywhere (CI; about 3 min on 2 CPUs)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(FIGURES)}")
    p.add_argument("--out", default=os.path.join(REPO, "bench-results"), help="where the JSON goes")
    p.add_argument("--installed", help="an existing `make install` root (cni/, bin/); default: install into a temp dir")
    p.add_argument("--docs", help="rewrite the tables of the figures run in this directory's pages "
                                  "(bench/doc_tables.py; default: docs/ of this checkout, none with --smoke)")
    p.add_argument("--no-docs", action="store_true", help="leave the docs' tables alone")
    args = p.parse_args(argv)
    if args.docs is None and not args.smoke:
        args.docs = doc_tables.DOCS
    if args.no_docs:
        args.docs = None
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    args.figures = [f.strip() for f in args.only.split(",") if f.strip()] or list(FIGURES)
    try:
        args.scale_sizes = sorted({int(n) for n in str(args.scale_nodes).split(",") if n.strip()})
    except ValueError:
        p.error(f"--scale-nodes {args.scale_nodes!r}: expected comma-separated node counts, e.g. 100,1000,5000")
    if not args.scale_sizes or min(args.scale_sizes) <= args.scale_agents:
        p.error(f"--scale-nodes {args.scale_nodes!r}: every N must exceed --scale-agents ({args.scale_agents})")
    try:
        args.scale_wireguard_sizes = sorted({int(n) for n in str(args.scale_wireguard_nodes).split(",") if n.strip()})
    except ValueError:
        p.error(f"--scale-wireguard-nodes {args.scale_wireguard_nodes!r}: expected comma-separated node counts")
    if args.scale_wireguard_sizes and min(args.scale_wireguard_sizes) <= args.scale_agents:
        p.error(f"--scale-wireguard-nodes: every N must exceed --scale-agents ({args.scale_agents})")
    unknown = set(args.figures) - set(FIGURES)
    if unknown:
        p.error(f"unknown figure(s) {', '.join(sorted(unknown))}; choose from {', '.join(FIGURES)}")
    return args


def _out(args: list) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    cpu = ""
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = next((line.split()[1] for line in _out(["free", "-h"]).splitlines() if line.startswith("Mem:")), "")
    return {"nproc": int(_out(["nproc"]) or os.cpu_count() or 0), "memory": mem, "kernel": _out(["uname", "-r"]),
            "cpu": cpu, "os": _out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
            "python": platform.python_version()}


def versions() -> dict:
    pkgs = _out(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", "containernetworking-plugins", "iperf3",
                 "etcd-server", "containerd", "runc"])
    commit = _out(["git", "-C", REPO, "rev-parse", "--short", "HEAD"])
    dirty = bool(_out(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"]))
    return {"packages": dict(line.split(" ", 1) for line in pkgs.splitlines() if " " in line),
            "weft_commit": commit + ("+uncommitted changes" if dirty else "")}


def install(work: str) -> str:
    root = os.path.join(work, "install")
    subprocess.run(["make", "-s", "-C", REPO, "install", f"VENV={sys.prefix}", f"CNI_BIN_DIR={root}/cni",
                    f"BIN_DIR={root}/bin"], check=True, stdout=subprocess.DEVNULL, timeout=600)
    return root


def run_figures(ctx, args) -> dict:
    steps = {
        "default": lambda: default_config.default_config(ctx, args.attachments, args.parallel, args.workers,
                                                         args.parallel_rounds),
        "sequential": lambda: attach.sequential(ctx, args.attachments),
        "parallel": lambda: attach.parallel(ctx, args.parallel, args.workers, args.parallel_rounds),
        "density": lambda: attach.scale(ctx, args.prepopulate, args.measure, args.workers),
        "throughput": lambda: throughput.throughput(ctx, args.iperf_seconds, args.iperf_rounds),
        "source-validation": lambda: source_validation.source_validation(ctx, args.sv_seconds, args.sv_rounds,
                                                                          args.sv_adds),
        "wireguard": lambda: wireguard.wireguard(ctx, args.iperf_seconds, args.iperf_rounds),
        "ipv6-underlay": lambda: ipv6_underlay.ipv6_underlay(ctx, args.iperf_seconds, args.iperf_rounds),
        "convergence": lambda: convergence.convergence(ctx, args.nodes, args.leases),
        "cri": lambda: cri.cri(ctx, args.sandboxes),
        "policy": lambda: policy.policy(ctx, 2, args.policy_pods, args.policy_count, args.policy_changes,
                                        args.policy_adds),
        "flows": lambda: flows.flows(ctx, args.flow_seconds, args.flow_rounds, args.flow_ipfix, args.flow_preload),
        "scale": lambda: scale.scale(ctx, args.scale_sizes, args.scale_agents, args.scale_churn,
                                     args.scale_quiet, args.out, args.scale_wireguard_sizes),
    }
    figures = {}
    for name in args.figures:
        idle = quiesce(ctx)
        started = time.monotonic()
        try:
            figures[name] = steps[name]()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # record it, keep the other figures
            traceback.print_exc()
            figures[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        figures[name]["duration_s"] = round(time.monotonic() - started, 1)
        figures[name]["cpu_idle_before"] = idle
    return figures


def command(argv: list) -> str:
    """How this run was started, as the docs' tables quote it."""
    if os.environ.get("MAKELEVEL"):  # `make bench BENCH_ARGS=...` runs `python -m bench.run $(BENCH_ARGS)`
        return "make bench" + (f" BENCH_ARGS={shlex.quote(' '.join(argv))}" if argv else "")
    return shlex.join(["python", "-m", "bench.run", *argv])


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root: it creates network namespaces", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    started = datetime.datetime.now(datetime.timezone.utc)
    source = versions()  # the code measured: read now, not when the run ends (a commit may land meanwhile)
    work = tempfile.mkdtemp(prefix="weft-bench-")
    ctx = None
    try:
        installed = args.installed or install(work)
        ctx = Context(args, work, installed)
        ctx.say(f"installed weft at {installed}; figures: {', '.join(args.figures)}")
        figures = run_figures(ctx, args)
    finally:
        if ctx is not None:
            ctx.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "meta": {"date": started.isoformat(timespec="seconds"), "smoke": args.smoke,
                 "command": command(sys.argv[1:] if argv is None else argv),
                 "args": {k: v for k, v in vars(args).items() if k not in ("out", "installed", "only", "docs", "no_docs")},
                 "duration_s": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1),
                 "machine": machine(), **source,
                 "contenders": LABELS,
                 "harness": "lab.cni.invoke: `ip netns exec <node> <plugin>` with CNI_* env + netconf on stdin, "
                            "timed around the exec; each contender in its own node namespace"},
        "figures": figures,
    }
    results["targets"] = report.targets(figures)
    results["namespaces_made"] = ctx.namespaces_made
    table = report.render(results)
    results["table_markdown"] = table
    os.makedirs(args.out, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(args.out, f"{stamp}.json")
    with open(path, "w") as handle:
        json.dump(results, handle, indent=2)
    shutil.copyfile(path, os.path.join(args.out, "latest.json"))
    m = results["meta"]["machine"]
    print(f"weft benchmark {results['meta']['date']} ({m['nproc']} CPUs {m['cpu']}, {m['memory']} RAM, "
          f"kernel {m['kernel']}; {results['meta']['duration_s']} s)\n")
    print(table)
    print(f"results: {path}")
    failed = any("error" in f for f in figures.values())
    if args.docs:
        try:
            for name, page in doc_tables.update(results, args.docs, args.out):
                print(f"table rewritten: {page} ({name})")
        except doc_tables.DocTablesError as exc:
            print(f"docs not rewritten: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
