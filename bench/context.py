"""Run-wide state of one benchmark run: work dir, install, namespaces made, progress, stats."""

import math
import os
import shutil
import sys
import time

from lab import netns_batch
from lab.namespaces import Namespace


class Context:
    def __init__(self, args, work: str, installed: str):
        self.args = args
        self.work = work
        self.installed = installed
        self.started = time.monotonic()
        self.quiesce_timeout = 0.0 if args.smoke else 6.0  # smoke: no waiting for a quiet machine
        self.namespaces_made = []   # every namespace name this run made (for the report and checks)
        self._own = []              # the ones removed by name at the end (not Cluster-managed)

    # -- progress on stderr (stdout carries the table) -------------------------
    def say(self, text: str) -> None:
        print(f"[bench {time.monotonic() - self.started:6.1f}s] {text}", file=sys.stderr, flush=True)

    # -- namespaces ------------------------------------------------------------
    def namespace(self, prefix: str) -> Namespace:
        ns = Namespace(prefix)
        self.namespaces_made.append(ns.name)
        self._own.append(ns.name)
        return ns

    def pod_namespaces(self, prefix: str, count: int) -> list:
        names = netns_batch.add_many(prefix, count)
        self.namespaces_made += names
        self._own += names
        return names

    def release(self, names) -> None:
        """Remove namespaces now (they stay recorded in namespaces_made)."""
        names = list(names)
        netns_batch.delete_many(names)
        gone = set(names)
        self._own = [n for n in self._own if n not in gone]

    def record(self, names) -> None:
        """Namespaces made by someone else (lab.cluster) for the report."""
        self.namespaces_made += [n for n in names if n not in self.namespaces_made]

    def cleanup(self) -> None:
        netns_batch.delete_many(self._own)
        self._own = []
        shutil.rmtree(self.work, ignore_errors=True)


# -- statistics ----------------------------------------------------------------
def percentile(values, q: float):
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    data = sorted(values)
    if not data:
        return None
    k = (len(data) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summary(values) -> dict:
    values = list(values)
    if not values:
        return {"n": 0, "p50": None, "p95": None, "mean": None, "min": None, "max": None}
    return {"n": len(values), "p50": round(percentile(values, 50), 2), "p95": round(percentile(values, 95), 2),
            "mean": round(sum(values) / len(values), 2), "min": round(min(values), 2),
            "max": round(max(values), 2)}


def rotate(items: list, i: int) -> list:
    k = i % len(items)
    return items[k:] + items[:k]


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


# -- machine state ---------------------------------------------------------------
def _cpu_times():
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return idle, sum(fields[:8])


def quiesce(ctx, idle_fraction: float = 0.8, window: float = 0.5, timeout: float = None) -> float:
    """Wait (bounded) until the machine is mostly idle, e.g. after the kernel tore down
    hundreds of namespaces in the background.  Returns the idle fraction last seen (the
    machine may be shared: the figures record it, they do not wait forever for it)."""
    timeout = ctx.quiesce_timeout if timeout is None else timeout
    start = time.monotonic()
    idle = None
    while time.monotonic() - start < timeout:
        idle0, total0 = _cpu_times()
        time.sleep(window)
        idle1, total1 = _cpu_times()
        if total1 > total0:
            idle = (idle1 - idle0) / (total1 - total0)
            if idle >= idle_fraction:
                break
    waited = time.monotonic() - start
    if waited > 2 * window + 0.2:
        ctx.say(f"waited {waited:.1f}s for the machine to settle (idle {idle:.0%})" if idle is not None
                else f"waited {waited:.1f}s for the machine to settle")
    return None if idle is None else round(idle, 2)


def rss_mib(pid: int):
    """VmRSS of a process in MiB; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


def cpu_seconds(pid: int):
    """User + system CPU seconds of a process so far; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
