"""bench/doc_tables.py: a run's figures become the docs' tables, and nothing else moves.

Pure logic on fixture results and pages in a temporary directory; the real run that
writes them is tests/e2e/test_bench_smoke.py."""

import copy
import os
import re

import pytest

from bench import doc_tables, run
from bench.doc_tables import DocTablesError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

META = {"date": "2026-12-07T01:02:03+00:00", "smoke": False, "command": "python -m bench.run --only throughput,policy",
        "weft_commit": "abc1234", "machine": {"nproc": 2, "cpu": "Test CPU", "kernel": "6.1.0-test"}}
THROUGHPUT = {"seconds": 5, "rounds": 3, "weft_pod_mtu": 1450, "reference_pod_mtu": 1450,
              "same_node": {"weft_gbps": 8.369, "reference_gbps": 9.022, "ratio": 0.928},
              "cross_node": {"weft_gbps": 7.214, "reference_gbps": 8.064, "ratio": 0.895},
              "duration_s": 60.1, "cpu_idle_before": 0.42}
POLICY = {"nodes": 2, "pods": 1000, "policies": 200, "rules_per_node": 1212,
          "change_to_enforced": {"n": 40, "p50_ms": 13.7, "p95_ms": 36.7, "max_ms": 41.1, "min_ms": 2.0,
                                 "changes": 20, "missing": 0},
          "add_p50_ms": {"no_policy": 21.8, "policies": 23.2, "ratio": 1.064},
          "tcp_connections_per_s": {"no_policy": 7775.0, "policies": 7628.0, "ratio": 0.981},
          "agent_rss_mib": {"max": 89.5}, "duration_s": 80.0, "cpu_idle_before": 0.9}
RESULTS = {"meta": META, "figures": {"throughput": THROUGHPUT, "policy": POLICY}}

THROUGHPUT_BLOCK = """\
_Run of 2026-12-07 01:02 UTC; weft abc1234; `python -m bench.run --only throughput,policy`; \
2 CPUs (Test CPU), kernel 6.1.0-test; 42% idle before the figure._

| pod-to-pod TCP, iperf3 | weft (Gbit/s) | reference (Gbit/s) | weft / reference |
| --- | --- | --- | --- |
| same node (bridge) | 8.37 | 9.02 | 0.93x |
| cross node (VXLAN, MTU 1450) | 7.21 | 8.06 | 0.90x |

| target | measured | goal | result |
| --- | --- | --- | --- |
| pod-to-pod throughput same-node, weft / reference | 0.93x (8.369 vs 9.022 Gbit/s) | ≥ 0.95x | MISS (2% under) |
| pod-to-pod throughput cross-node, weft / reference | 0.90x (7.214 vs 8.064 Gbit/s) | ≥ 0.95x | MISS (6% under) |"""

PAGE_A = """# A page

Text before, with `<!-- bench:throughput -->` quoted in prose (not a marker).
Odd spacing   kept\t exactly.

<!-- bench:throughput -->
old table
<!-- /bench:throughput -->
Text between.
<!-- bench:wireguard -->

the old wireguard table, left alone: the run did not measure it

<!-- /bench:wireguard -->
tail without a final newline"""
PAGE_B = """# B

<!-- bench:policy -->
<!-- /bench:policy -->
"""


def docs_dir(tmp_path, pages):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in pages.items():
        (docs / name).write_text(text)
    return docs


def test_a_figure_renders_as_caption_table_and_its_targets():
    assert doc_tables.render("throughput", THROUGHPUT, META) == THROUGHPUT_BLOCK


def test_policy_table_and_smoke_caption():
    block = doc_tables.render("policy", POLICY, {**META, "smoke": True})
    lines = block.splitlines()
    assert lines[0].endswith("; 90% idle before the figure; smoke counts, not figures._")
    assert "| 1,000 pods, 200 policies (1,212 rules per node), 2 nodes | with the policies | without | " \
           "with / without |" in lines
    assert "| policy change -> enforced on every node, p50 / p95 / max (ms; 20 changes, 40 samples) | " \
           "13.7 / 36.7 / 41.1 |  |  |" in lines
    assert "| ADD p50 through the agent (ms, interleaved rounds) | 23.2 | 21.8 | 1.06x |" in lines
    assert "| ADD p50 with the policies vs none | 1.06x (23.2 vs 21.8 ms) | ≤ 1.1x | PASS |" in lines


def test_update_rewrites_the_blocks_of_the_run_and_keeps_every_other_byte(tmp_path):
    docs = docs_dir(tmp_path, {"a.md": PAGE_A, "b.md": PAGE_B, "notes.txt": "<!-- bench:nothing -->\n"})
    done = doc_tables.update(RESULTS, str(docs))
    assert done == [("policy", str(docs / "b.md")), ("throughput", str(docs / "a.md"))]
    a, b = (docs / "a.md").read_text(), (docs / "b.md").read_text()
    assert doc_tables.without_blocks(a, "a") == doc_tables.without_blocks(PAGE_A, "a")
    assert doc_tables.without_blocks(b, "b") == doc_tables.without_blocks(PAGE_B, "b") == "# B\n\n" + \
        "<!-- bench:policy --><!-- /bench:policy -->\n"
    assert a.startswith(PAGE_A[:PAGE_A.index("<!-- bench:throughput -->\n")])
    assert f"<!-- bench:throughput -->\n\n{THROUGHPUT_BLOCK}\n\n<!-- /bench:throughput -->\nText between." in a
    assert PAGE_A[PAGE_A.index("Text between."):] == a[a.index("Text between."):]  # wireguard's block as it was
    assert "\n\n| 1,000 pods, 200 policies" in b
    # the same run again changes nothing; a failed figure keeps the table it had
    doc_tables.update(RESULTS, str(docs))
    assert (docs / "a.md").read_text() == a
    failed = copy.deepcopy(RESULTS)
    failed["figures"]["throughput"] = {"error": "RuntimeError: iperf3 client failed", "duration_s": 1.0}
    failed["meta"]["date"] = "2026-12-08T00:00:00+00:00"
    assert doc_tables.update(failed, str(docs)) == [("policy", str(docs / "b.md"))]
    assert (docs / "a.md").read_text() == a


def test_scale_also_refreshes_the_plot(tmp_path):
    docs = docs_dir(tmp_path, {"s.md": "<!-- bench:scale -->\n<!-- /bench:scale -->\n"})
    out = tmp_path / "results"
    out.mkdir()
    (out / "scale.svg").write_text("<svg/>")
    point = {"n": 10, "start_to_programmed_s": {"max": 0.3}, "churn": {"p50_ms": 3.0, "p99_ms": 5.0},
             "quiet": {"cpu_ms_per_interval": {"max": 10.0}}, "rss_mib": {"max": 60.0}, "kernel_matches_etcd": True}
    results = {"meta": META, "figures": {"scale": {"agents": 2, "points": [point], "wireguard": []}}}
    doc_tables.update(results, str(docs), str(out))
    assert (docs / "scale.svg").read_text() == "<svg/>"
    assert "| N nodes (2 real agents) | 10 |" in (docs / "s.md").read_text()


@pytest.mark.parametrize("page, message", [
    ("<!-- bench:throughputs -->\n<!-- /bench:throughputs -->\n",
     "x.md:1: marker <!-- bench:throughputs --> names no figure"),
    ("<!-- bench:throughput -->\nno end\n", "x.md: <!-- bench:throughput --> is never closed"),
    ("<!-- /bench:throughput -->\n", "x.md:1: <!-- /bench:throughput --> closes no open"),
    ("<!-- bench:throughput -->\n<!-- bench:policy -->\n<!-- /bench:policy -->\n<!-- /bench:throughput -->\n",
     "x.md:2: <!-- bench:policy --> opens inside <!-- bench:throughput -->"),
    ("<!-- bench:policy -->\n<!-- /bench:policy -->\n<!-- bench:policy -->\n<!-- /bench:policy -->\n",
     "x.md:3: a second <!-- bench:policy -->"),
])
def test_a_bad_marker_is_an_error_naming_the_page_and_the_marker_and_nothing_is_written(tmp_path, page, message):
    docs = docs_dir(tmp_path, {"a.md": PAGE_A, "x.md": page})
    with pytest.raises(DocTablesError) as err:
        doc_tables.update(RESULTS, str(docs))
    assert message in str(err.value) and str(docs / "x.md") in str(err.value)
    assert (docs / "a.md").read_text() == PAGE_A and (docs / "x.md").read_text() == page


def test_a_figure_without_a_block_is_an_error_naming_the_docs_and_the_figure(tmp_path):
    docs = docs_dir(tmp_path, {"a.md": PAGE_A})
    with pytest.raises(DocTablesError, match=re.escape(f"{docs}: no page has a block for figure(s) policy")):
        doc_tables.update(RESULTS, str(docs))
    assert (docs / "a.md").read_text() == PAGE_A
    with pytest.raises(DocTablesError, match=re.escape(f"{docs / 'a.md'}: no <!-- bench:policy -->")):
        doc_tables.replace(PAGE_A, str(docs / "a.md"), "policy", "x")


def test_a_block_on_two_pages_is_an_error(tmp_path):
    docs = docs_dir(tmp_path, {"a.md": PAGE_A, "b.md": PAGE_B, "c.md": PAGE_B})
    with pytest.raises(DocTablesError, match=r"c\.md: <!-- bench:policy --> is also on .*b\.md"):
        doc_tables.update(RESULTS, str(docs))


def test_every_figure_has_a_renderer_and_one_block_in_docs_and_every_block_a_figure():
    assert set(doc_tables.RENDERERS) == set(run.FIGURES)
    pages = doc_tables.pages(os.path.join(REPO, "docs"))
    owner = doc_tables.where(pages)  # raises on an unknown, repeated or unclosed marker
    assert set(owner) == set(run.FIGURES), set(run.FIGURES) ^ set(owner)
    with open(os.path.join(REPO, "README.md")) as handle:
        assert not doc_tables.MARKER.search(handle.read()), "README.md: the tables live in docs/"
    for name, path in owner.items():  # each block names the run it came from
        start, end = doc_tables.markers(pages[path], path)[name]
        assert pages[path][start:end].lstrip("\n").startswith("_Run of "), (path, name)


def _cri_release(weft, standalone, reference, plugins, cni_version):
    def phase(scale):
        stats = {label: {"run_ms": {"p50": ms * scale, "p95": ms * scale * 2},
                         "stop_ms": {"p50": ms / 2, "p95": ms},
                         "add_in_handlers_ms": {"p50": 5.0}, "del_in_handlers_ms": {"p50": 20.0}}
                 for label, ms in (("weft", weft), ("weft_standalone", standalone), ("reference", reference))}
        return {**stats, "run_p50_ratio": round(weft / reference, 3)}
    return {**phase(1.0), "resident": phase(1.5), "cni_version": cni_version, "reference_plugins_version": plugins,
            "exec_ms": {"weft": 16.0, "weft_standalone": 80.0, "bridge": 4.0}}


def test_cri_block_has_both_containerd_releases_weftd_and_standalone_and_a_target_per_release_and_phase():
    fig = {"rounds": 20, "releases": {"1.6": _cri_release(100.0, 300.0, 100.0, "1.1.1", "1.0.0"),
                                      "2.1": _cri_release(110.0, 330.0, 100.0, "1.9.1", "1.1.0")},
           "duration_s": 200.0, "cpu_idle_before": 0.9}
    block = doc_tables.render("cri", fig, META)
    rows = {}  # the first table's row where the steady-state table repeats a label
    for line in block.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    assert rows["containerd 1.6 (plugins 1.1.1, cniVersion 1.0.0): RunPodSandbox p50 (ms, 20 each, interleaved)"] \
        == ["100.0", "300.0", "100.0", "1.00x", "3.00x"]
    assert rows["containerd 2.1 (plugins 1.9.1, cniVersion 1.1.0): RunPodSandbox p50 (ms, 20 each, interleaved)"] \
        == ["110.0", "330.0", "100.0", "1.10x", "3.30x"]
    assert rows["containerd 2.1 (plugins 1.9.1, cniVersion 1.1.0): one plugin exec, VERSION, where containerd "
                "runs it (ms p50; Go: bridge)"] == ["16.0", "80.0", "4.0", "4.00x", "20.00x"]
    verdicts = {name: cells[-1] for name, cells in rows.items() if name.startswith("RunPodSandbox p50, containerd")}
    assert verdicts == {
        "RunPodSandbox p50, containerd 1.6, weft (weftd) vs reference chain 1.1.1, empty node": "PASS",
        "RunPodSandbox p50, containerd 1.6, weft (weftd) vs reference chain 1.1.1, node with a pod": "PASS",
        "RunPodSandbox p50, containerd 2.1, weft (weftd) vs reference chain 1.9.1, empty node": "MISS (5% over)",
        "RunPodSandbox p50, containerd 2.1, weft (weftd) vs reference chain 1.9.1, node with a pod": "MISS (5% over)"}


def test_default_block_has_a_ratio_against_each_reference_release():
    def side(add):
        return {"add_ms": {"p50": add, "p95": add}, "del_ms": {"p50": add, "p95": add}, "add_wall_s": add / 10,
                "del_wall_s": add / 10}
    fig = {"attachments": 200, "adds": 100, "workers": 8, "rounds": 3,
           "labels": {"weft": "weft default", "go": "Go 1.9.1 chain", "go-1.1": "Go 1.1 chain"},
           "weft": side(30.0), "go": side(20.0), "go-1.1": side(25.0), "kernel_floor": {"veth_del_ms": 11.0},
           "add_ms_p50_ratio": 1.5, "del_ms_p50_ratio": 1.5, "add_wall_s_ratio": 1.5}
    table = doc_tables.RENDERERS["default"](fig)
    assert table[0] == "| figure | Go 1.9.1 chain | Go 1.1 chain | weft default | weft / Go 1.9.1 | weft / Go 1.1 |"
    assert table[2] == "| ADD p50, 200 sequential (ms) | 20.0 | 25.0 | 30.0 | 1.50x | 1.20x |"
