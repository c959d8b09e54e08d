"""The benchmark's tables in docs/, rewritten by the run that measured them.

Each figure of `make bench` owns one block on one page of docs/, between the lines
`<!-- bench:FIGURE -->` and `<!-- /bench:FIGURE -->`: a caption naming the run (date,
weft commit, command, machine), the figure's table (the one `report` prints) and the
targets that judge it.  A run rewrites the blocks of the figures it ran without error
and leaves every other byte of every page as it was; the scale figure also refreshes
the page's plot (scale.svg).  Every check runs before anything is written, so a
marker that is missing, unknown, repeated or unclosed leaves the docs untouched.

    python -m bench.doc_tables RESULTS.json [--docs DIR]   # again, from a saved run
"""

import argparse
import datetime
import json
import os
import re
import shutil
import sys

from . import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
MARKER = re.compile(r"^<!-- (/?)bench:(\S*) -->$", re.M)  # a line of its own: prose may quote one


class DocTablesError(Exception):
    """A page's markers do not fit the figures: the message names the page and the marker."""


def _alone(table, name):
    """report's table function, fed this one figure."""
    return lambda fig: table({name: fig})


def _with_families(name, *tables):
    """report's tables of figure `name`, then its IPv4 / IPv6-only ratios side by side
    (bench/family.py), each table apart by a blank line."""
    def render(fig) -> list:
        parts = [lines for lines in (*(table(fig) for table in tables),
                                     report.family_table({name: fig}, (name,))) if lines]
        return [line for i, lines in enumerate(parts) for line in ([""] if i else []) + lines]
    return render


def _sequential(fig) -> list:
    lines = report.attachment_table({"sequential": fig})
    note = report.harness_floor_note({"sequential": fig})
    return lines + ["", note] if note and lines else lines


def _cri(fig) -> list:
    steady = report.cri_table({"cri": fig}, resident=True)
    return [*report.cri_table({"cri": fig}), *(["", "Steady state:", "", *steady] if steady else [])]


# figure -> its table(s), as lines; one entry per name in run.FIGURES (tests/unit/test_doc_tables.py)
RENDERERS = {
    "default": _with_families("default", _alone(report.default_table, "default")),
    "sequential": _with_families("sequential", _sequential),
    "parallel": _with_families("parallel", _alone(report.attachment_table, "parallel")),
    "density": _alone(report.attachment_table, "density"),
    "throughput": _alone(report.datapath_table, "throughput"),
    "source-validation": _alone(report.source_validation_table, "source-validation"),
    "wireguard": lambda fig: report.wireguard_rows({"wireguard": fig}, []),
    "convergence": _alone(report.convergence_table, "convergence"),
    "cri": _with_families("cri", _cri),
    "policy": _alone(report.policy_table, "policy"),
    "flows": _alone(report.flows_table, "flows"),
    "scale": _alone(report.scale_table, "scale"),
    "ipv6-underlay": _alone(report.ipv6_underlay_table, "ipv6-underlay"),
}


def caption(meta: dict, fig: dict) -> str:
    """One line: which run the block comes from."""
    date = datetime.datetime.fromisoformat(meta["date"]).astimezone(datetime.timezone.utc)
    machine = meta.get("machine") or {}
    parts = [f"Run of {date:%Y-%m-%d %H:%M} UTC", f"weft {meta.get('weft_commit') or 'unknown commit'}",
             f"`{meta.get('command', 'python -m bench.run')}`",
             f"{machine.get('nproc', '?')} CPUs ({machine.get('cpu') or '?'}), kernel {machine.get('kernel') or '?'}"]
    idle = fig.get("cpu_idle_before")
    if idle is not None:
        parts.append(f"{idle:.0%} idle before the figure")
    if meta.get("smoke"):
        parts.append("smoke counts, not figures")
    return "_" + "; ".join(parts) + "._"


def render(name: str, fig: dict, meta: dict) -> str:
    """The text between the markers of figure `name` (without the blank lines around it)."""
    lines = [caption(meta, fig), "", *RENDERERS[name](fig)]
    checks = report.targets({name: fig})
    if checks:
        lines += ["", *report.targets_table(checks)]
    return "\n".join(lines)


def blocks(results: dict) -> dict:
    """figure -> rendered block, for each figure of the run that did not fail."""
    out = {}
    for name, fig in results["figures"].items():
        if name not in RENDERERS:
            raise DocTablesError(f"figure {name!r} has no renderer in bench/doc_tables.py RENDERERS")
        if isinstance(fig, dict) and "error" not in fig:
            out[name] = render(name, fig, results["meta"])
    return out


def markers(text: str, path: str) -> dict:
    """name -> (end of its opening marker, start of its closing marker) on one page."""
    found, open_name, open_end = {}, None, 0
    for match in MARKER.finditer(text):
        closing, name = match.group(1) == "/", match.group(2)
        where = f"{path}:{text.count(chr(10), 0, match.start()) + 1}"
        if name not in RENDERERS:
            raise DocTablesError(f"{where}: marker {match.group(0)} names no figure of bench/doc_tables.py "
                                 f"(known: {', '.join(RENDERERS)})")
        if not closing:
            if open_name is not None:
                raise DocTablesError(f"{where}: <!-- bench:{name} --> opens inside <!-- bench:{open_name} -->, "
                                     f"which has no <!-- /bench:{open_name} --> before it")
            if name in found:
                raise DocTablesError(f"{where}: a second <!-- bench:{name} --> on the page")
            open_name, open_end = name, match.end()
        elif name != open_name:
            raise DocTablesError(f"{where}: <!-- /bench:{name} --> closes no open <!-- bench:{name} -->")
        else:
            found[name], open_name = (open_end, match.start()), None
    if open_name is not None:
        raise DocTablesError(f"{path}: <!-- bench:{open_name} --> is never closed (<!-- /bench:{open_name} -->)")
    return found


def without_blocks(text: str, path: str) -> str:
    """The page with every block's content taken out: what a run never changes."""
    kept, at = [], 0
    for start, end in sorted(markers(text, path).values()):
        kept.append(text[at:start])
        at = end
    return "".join(kept) + text[at:]


def pages(docs: str) -> dict:
    """path -> text of every page of the docs directory (*.md)."""
    names = sorted(n for n in os.listdir(docs) if n.endswith(".md"))
    out = {}
    for name in names:
        with open(os.path.join(docs, name)) as handle:
            out[os.path.join(docs, name)] = handle.read()
    return out


def where(texts: dict) -> dict:
    """figure -> the page holding its block; each figure on one page at most."""
    owner = {}
    for path, text in texts.items():
        for name in markers(text, path):
            if name in owner:
                raise DocTablesError(f"{path}: <!-- bench:{name} --> is also on {owner[name]}; one block per figure")
            owner[name] = path
    return owner


def replace(text: str, path: str, name: str, body: str) -> str:
    """The page with figure `name`'s block replaced by body; every other byte kept."""
    spans = markers(text, path)
    if name not in spans:
        raise DocTablesError(f"{path}: no <!-- bench:{name} --> ... <!-- /bench:{name} --> block")
    start, end = spans[name]
    return text[:start] + "\n\n" + body + "\n\n" + text[end:]


def update(results: dict, docs: str = DOCS, out_dir: str = "") -> list:
    """Rewrite the blocks of the figures the run measured; returns [(figure, page)] rewritten."""
    rendered = blocks(results)
    texts = pages(docs)
    owner = where(texts)
    missing = sorted(set(rendered) - set(owner))
    if missing:
        raise DocTablesError(f"{docs}: no page has a block for figure(s) {', '.join(missing)} "
                             f"(add <!-- bench:NAME --> ... <!-- /bench:NAME --> where each table belongs)")
    changed = dict(texts)
    for name, body in rendered.items():
        changed[owner[name]] = replace(changed[owner[name]], owner[name], name, body)
    for path, text in changed.items():
        if text != texts[path]:
            with open(path + ".tmp", "w") as handle:
                handle.write(text)
            os.replace(path + ".tmp", path)
    plot = os.path.join(out_dir, "scale.svg") if out_dir else ""
    if "scale" in rendered and plot and os.path.exists(plot):
        shutil.copyfile(plot, os.path.join(docs, "scale.svg"))
    return sorted((name, owner[name]) for name in rendered)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.doc_tables", description=__doc__.split("\n")[0])
    p.add_argument("results", help="a run's JSON (bench-results/latest.json)")
    p.add_argument("--docs", default=DOCS, help="the pages' directory (default: docs/ of this checkout)")
    args = p.parse_args(argv)
    with open(args.results) as handle:
        results = json.load(handle)
    try:
        done = update(results, args.docs)  # the tables only: the plot beside a saved JSON may be newer
    except DocTablesError as exc:
        print(f"bench.doc_tables: {exc}", file=sys.stderr)
        return 1
    for name, path in done:
        print(f"{path}: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
