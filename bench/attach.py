"""Attachment figures: sequential ADD/DEL, a parallel batch, ADD/DEL with 250 pods present.

Each figure makes fresh contenders (new node namespaces, new state dirs), warms each
with one unmeasured ADD+DEL, and interleaves them: attachment i is done by every
contender in turn, the order rotating with i, so machine noise hits all alike.
"""

import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from lab.cni import invoke

from .contenders import AGENT, STANDALONE, make_contenders, make_family_contenders
from .context import quiesce, rotate, summary
from .family import NAMES, families, ip_family, slot

MAX_ERRORS_KEPT = 3
VERSION_CALLS = 15


class Tally:
    """Per-contender timings and failures of one figure."""

    def __init__(self):
        self.times = {}
        self.errors = Counter()
        self.messages = []
        self.ips = []

    def add(self, series: str, ms: float, out, command: str):
        if out.code != 0:
            self.errors[command] += 1
            if len(self.messages) < MAX_ERRORS_KEPT:
                self.messages.append(f"{command}: {out}"[:400])
            return
        self.times.setdefault(series, []).append(ms)
        if command == "ADD" and out.json:
            self.ips.append(out.json["ips"][0]["address"])

    def stats(self, series: str) -> dict:
        return summary(self.times.get(series, []))


def _via_counts(contender) -> dict:
    """How weft says it served the calls ("agent"/"standalone"): proof of the contender's mode."""
    path = contender.conf.get("logFile")
    if not path or not os.path.exists(path):
        return {}
    counts = Counter()
    with open(path) as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:
                counts["unreadable"] += 1
                continue
            if not entry.get("teardown"):  # weftd's line when a DEL's background teardown ended: no call
                counts[entry.get("via", "?")] += 1
    return dict(counts)


def _handler_ms(contender, cid_prefix: str) -> dict:
    """ADD/DEL time inside weft's handlers (its log's "ms"): the rest of a call is process
    start-up, the forwarder and the harness."""
    path = contender.conf.get("logFile")
    if not path or not os.path.exists(path):
        return {}
    times = {}
    with open(path) as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if str(entry.get("containerID", "")).startswith(cid_prefix) and entry.get("exit") == 0:
                times.setdefault(entry.get("command"), []).append(float(entry.get("ms", 0.0)))
    return {command.lower() + "_ms": summary(values) for command, values in times.items()}


def _finish(ctx, contenders, pods_by_kind):
    for contender in contenders:
        contender.close()
    ctx.release(n for names in pods_by_kind.values() for n in names)


def _harness_floor(ctx, node, runs: int = 15) -> dict:
    """The fixed cost every contender pays: `ip netns exec <node> /bin/true` through invoke."""
    times = []
    for i in range(runs):
        started = time.perf_counter()
        invoke("/bin/true", "VERSION", {}, node=node)
        times.append((time.perf_counter() - started) * 1000.0)
    return summary(times)


def interleaved_add_del(ctx, contenders, pods: dict, attachments: int, tallies: dict, what: str) -> None:
    """ADD pods[c][i] for i < attachments, every contender in turn (the order rotating
    with i), then DEL them the same way; timings into tallies[c]."""
    for command in ("ADD", "DEL"):
        for i in range(attachments):
            for c in rotate(contenders, i):
                ms, out = c.call(command, pods[c][i], f"seq-{c.kind}-{i}")
                tallies[c].add(command, ms, out, command)
        ctx.say(f"{what} {command} done")


def _pod_prefix(figure: str, c) -> str:
    """Pod namespace names per figure, contender kind and family (IPv6-only: a 6)."""
    return f"{figure}{'' if c.family == 4 else '6'}{c.kind[0]}{c.kind[-1]}"


def sequential(ctx, attachments: int) -> dict:
    """ADD `attachments` pods per contender one after another, then DEL them all; each
    contender kind on an IPv4 range and again on an IPv6-only one (bench/family.py)."""
    fams = families(ctx)
    ctx.say(f"sequential: {attachments} ADDs then {attachments} DELs per contender, "
            f"{' and '.join(NAMES[f] for f in fams)}, interleaved")
    contenders = make_family_contenders(ctx, "sequential", fams)
    pods = {}
    try:
        for c in contenders:
            pods[c] = ctx.pod_namespaces(_pod_prefix("wbs", c), attachments + 1)
            c.warm_up(pods[c][-1])
        floor = _harness_floor(ctx, contenders[0].node)
        tallies = {c: Tally() for c in contenders}
        interleaved_add_del(ctx, contenders, pods, attachments, tallies, "sequential")
        for i in range(VERSION_CALLS):  # the start-up floor of each contender: a call that does nothing
            for c in rotate(contenders, i):
                ms, out = c.call("VERSION", pods[c][0], f"version-{c.kind}-{i}")
                tallies[c].add("VERSION", ms, out, "VERSION")
        result = {"attachments": attachments, "harness_floor_ms": floor}
        for c in contenders:
            t = tallies[c]
            slot(result, c.family)[c.kind] = {
                "add_ms": t.stats("ADD"), "del_ms": t.stats("DEL"), "errors": dict(t.errors),
                "error_samples": t.messages, "distinct_ips": len(set(t.ips)),
                "families": sorted({ip_family(ip) for ip in t.ips}), "via": _via_counts(c),
                "version_ms": t.stats("VERSION"), "inside_weft": _handler_ms(c, "seq-")}
            if c.kind == AGENT:
                slot(result, c.family)[c.kind]["agent_rss_mib"] = c.agent_rss()
        return result
    finally:
        _finish(ctx, contenders, pods)


def _batch(contender, command, pod_names, cids, workers):
    """(wall seconds, [(ms, Outcome)]) of calls by `workers` parallel callers."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda item: contender.call(command, *item), zip(pod_names, cids)))
    return time.perf_counter() - started, results


def _median(values):
    data = sorted(values)
    n = len(data)
    return (data[n // 2] if n % 2 else (data[n // 2 - 1] + data[n // 2]) / 2) if n else None


def parallel(ctx, adds: int, workers: int, rounds: int) -> dict:
    """`adds` ADDs by `workers` parallel callers on an empty node, then DEL them the same way.

    A batch owns the machine, so batches cannot interleave call by call; instead the Go
    chain and the agent repeat theirs `rounds` times in rotating order (median reported),
    on IPv4 and IPv6-only ranges alike (bench/family.py).  The standalone batch (~25 s)
    runs in the first round only."""
    fams = families(ctx)
    ctx.say(f"parallel: {adds} ADDs with {workers} callers per contender, {rounds} rounds, "
            f"{' and '.join(NAMES[f] for f in fams)}")
    contenders = make_family_contenders(ctx, "parallel", fams)
    pods = {}
    try:
        for c in contenders:
            pods[c] = ctx.pod_namespaces(_pod_prefix("wbp", c), adds + 1)
            c.warm_up(pods[c][-1])
        walls = {c: {"ADD": [], "DEL": []} for c in contenders}
        tallies = {c: Tally() for c in contenders}
        distinct = {c: [] for c in contenders}
        for r in range(rounds):
            quiesce(ctx)
            for c in rotate(contenders, r):
                if c.kind == STANDALONE and r > 0:
                    continue
                names = pods[c][:adds]
                cids = [f"par{r}-{c.kind}-{i}" for i in range(adds)]
                before = len(tallies[c].ips)
                for command in ("ADD", "DEL"):  # DEL leaves the node empty for the next round
                    wall, results = _batch(c, command, names, cids, workers)
                    walls[c][command].append(wall)
                    for ms, out in results:
                        tallies[c].add(command, ms, out, command)
                distinct[c].append(len(set(tallies[c].ips[before:])))
                ctx.say(f"parallel round {r + 1}: {c.label} ({NAMES[c.family]}): {adds} ADDs in "
                        f"{walls[c]['ADD'][-1]:.2f}s, DELs in {walls[c]['DEL'][-1]:.2f}s")
        result = {"adds": adds, "workers": workers, "rounds": rounds}
        for c in contenders:
            t = tallies[c]
            add_wall, del_wall = _median(walls[c]["ADD"]), _median(walls[c]["DEL"])
            slot(result, c.family)[c.kind] = {
                "add_wall_s": round(add_wall, 3), "pods_per_s": round(adds / add_wall, 2),
                "del_wall_s": round(del_wall, 3),
                "add_walls_s": [round(w, 3) for w in walls[c]["ADD"]],
                "del_walls_s": [round(w, 3) for w in walls[c]["DEL"]],
                "add_ms": t.stats("ADD"), "del_ms": t.stats("DEL"), "errors": dict(t.errors),
                "error_samples": t.messages, "distinct_ips": min(distinct[c]),
                "families": sorted({ip_family(ip) for ip in t.ips}), "via": _via_counts(c)}
            if c.kind == AGENT:
                slot(result, c.family)[c.kind]["agent_rss_mib"] = c.agent_rss()
        return result
    finally:
        _finish(ctx, contenders, pods)


def scale(ctx, prepopulate: int, measure: int, workers: int) -> dict:
    """ADD/DEL latency on an empty node and on a node holding `prepopulate` attachments.

    Each contender gets two identical nodes, one left empty and one pre-populated (by
    the contender itself, `workers` callers); the measured ADD+DEL pairs then alternate
    between the two nodes and across contenders, so the @N/@0 ratio compares samples
    taken side by side rather than a minute apart."""
    ctx.say(f"scale: {measure} ADD+DEL pairs on an empty node and on one with {prepopulate} attachments")
    empty = make_contenders(ctx, "scale-empty", 0)
    full = []
    pods = {}
    try:
        full = make_contenders(ctx, "scale-full", len(empty))
        for c in empty + full:
            tag = "e" if c in empty else "f"
            pods[(tag, c.kind)] = ctx.pod_namespaces(f"wbc{tag}{c.kind[0]}{c.kind[-1]}",
                                                     measure + 1 + (prepopulate if tag == "f" else 0))
            c.warm_up(pods[(tag, c.kind)][-1])
        tallies = {c.kind: Tally() for c in empty}
        fill = {}
        for c in full:  # "with the contender itself"
            names = pods[("f", c.kind)][measure:measure + prepopulate]
            wall, results = _batch(c, "ADD", names, [f"fill-{c.kind}-{i}" for i in range(prepopulate)], workers)
            for _, out in results:
                if out.code != 0:
                    tallies[c.kind].add("fill", 0.0, out, "fill-ADD")
            fill[c.kind] = round(wall, 2)
            ctx.say(f"scale: {c.label} pre-populated {prepopulate} in {wall:.1f}s")
        quiesce(ctx)
        pairs = [(c, "e", "at0") for c in empty] + [(c, "f", "atN") for c in full]
        for i in range(measure):
            for c, tag, where in rotate(pairs, i):
                cid = f"{where}-{c.kind}-{i}"
                for command in ("ADD", "DEL"):
                    ms, out = c.call(command, pods[(tag, c.kind)][i], cid)
                    tallies[c.kind].add(f"{command}@{where}", ms, out, command)
        result = {"prepopulated": prepopulate, "measured": measure}
        for c, loaded in zip(empty, full):
            t = tallies[c.kind]
            add0, addn = t.stats("ADD@at0"), t.stats("ADD@atN")
            del0, deln = t.stats("DEL@at0"), t.stats("DEL@atN")
            result[c.kind] = {
                "add_ms_at0": add0, "add_ms_atN": addn, "del_ms_at0": del0, "del_ms_atN": deln,
                "add_ratio_atN_at0": round(addn["p50"] / add0["p50"], 3) if add0["p50"] and addn["p50"] else None,
                "del_ratio_atN_at0": round(deln["p50"] / del0["p50"], 3) if del0["p50"] and deln["p50"] else None,
                "prepopulate_wall_s": fill[c.kind], "errors": dict(t.errors), "error_samples": t.messages,
                "via": {"empty": _via_counts(c), "populated": _via_counts(loaded)}}
            if c.kind == AGENT:
                result[c.kind]["agent_rss_mib"] = max(v for v in (c.agent_rss(), loaded.agent_rss(), 0.0)
                                                      if v is not None)
        return result
    finally:
        _finish(ctx, empty + full, pods)  # the pre-populated pods go with their namespaces
