"""`make bench` cannot rot: its reduced version (`--smoke`, ~3 min on 2 CPUs) runs every figure
with tiny counts and must produce a complete, sane JSON for every contender (the
reference Go chain of plugins 1.9.1 and of 1.1, weft standalone and through weftd),
and the CRI figure for containerd 1.6 and 2.1; the per-pod figures on an IPv4 and an
IPv6-only network (bench/family.py; there without plugins 1.1's chain), each
contender's pods getting addresses of its family only.
Timing goals are the benchmark's business; nothing here asserts a speed."""

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

from bench import doc_tables

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = ("go", "go-1.1", "weft-standalone", "weft-agent")
FAMILIES = (("ipv4", 4), ("ipv6", 6))  # a figure's half of each family: bench/family.py half()


def kinds_of(kinds, version):
    """The IPv6-only half measures against plugins 1.9.1 only (plugins 1.1 stays on IPv4)."""
    return tuple(k for k in kinds if version == 4 or k != "go-1.1")
FIGURES = {"default", "sequential", "parallel", "density", "throughput", "source-validation", "wireguard",
           "ipv6-underlay", "convergence", "cri", "policy", "flows", "scale"}


def netns_names():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def sane_ms(stats, n):
    assert stats["n"] == n, stats
    assert 0 < stats["min"] <= stats["p50"] <= stats["p95"] <= stats["max"], stats


def half(figure, name):
    return figure if name == "ipv4" else figure["ipv6"]


def test_bench_smoke(tmp_path, installed):
    out = tmp_path / "results"
    docs = tmp_path / "docs"  # a copy: the smoke run writes its tables there, never into the tree
    shutil.copytree(os.path.join(REPO, "docs"), docs)
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(out),
                           "--installed", str(installed), "--docs", str(docs)], cwd=REPO, capture_output=True,
                          text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    files = sorted(p.name for p in out.iterdir())
    # the run's JSON, latest.json, and the scale figure's plot
    assert len(files) == 3 and "latest.json" in files and "scale.svg" in files, files
    ET.parse(out / "scale.svg")
    data = json.loads((out / "latest.json").read_text())
    assert data == json.loads((out / [f for f in files if f.endswith("Z.json")][0]).read_text())
    figures = data["figures"]
    assert set(figures) == FIGURES
    assert not [name for name, fig in figures.items() if "error" in fig], figures
    meta = data["meta"]
    assert meta["smoke"] is True and meta["machine"]["nproc"] >= 1 and meta["machine"]["kernel"]

    default = figures["default"]  # the headline: weft as installed, agent with a lease, through libcni
    for name, version in FAMILIES:
        fam = half(default, name)
        for kind in kinds_of(("weft", "go", "go-1.1", "weft-alone", "go-alone"), version):
            assert fam[kind]["errors"] == 0, fam[kind]["error_samples"]
            sane_ms(fam[kind]["add_ms"], 10)
            sane_ms(fam[kind]["del_ms"], 10)
            assert fam[kind]["distinct_ips"] == 10 and fam[kind]["families"] == [version], (name, kind, fam[kind])
        assert fam["masquerade_table"]["state"] == "installed", fam["masquerade_table"]
        steps = fam["weft"]["steps_p50_ms"]
        assert {"ipam", "veth", "validation", "container", "masquerade"} <= set(steps["add"]), steps  # validation on
        assert {"config", "cut-off"} <= set(steps["del"]), steps  # the rest in weftd's background teardown
        assert fam["churn"]["errors"] == 0 and fam["churn"]["p99_ratio"], fam["churn"]
        assert ("go-1.1" in fam) is (version == 4), sorted(fam)
        assert fam["add_ms_p50_ratio"] > 0 and fam["del_wall_s_ratio_alone"] > 0, fam
    rss = default["weft"]["forwarder_peak_rss_mib"]
    assert 0 < rss["version_via_agent"] and 0 < rss["version_standalone"], rss
    assert 0 < default["kernel_floor"]["veth_del_ms"], default["kernel_floor"]

    seq = figures["sequential"]
    for name, version in FAMILIES:
        fam = half(seq, name)
        for kind in kinds_of(KINDS, version):
            assert fam[kind]["errors"] == {}, fam[kind]["error_samples"]
            sane_ms(fam[kind]["add_ms"], 10)
            sane_ms(fam[kind]["del_ms"], 10)
            assert fam[kind]["distinct_ips"] == 10 and fam[kind]["families"] == [version], (name, kind, fam[kind])
            sane_ms(fam[kind]["version_ms"], 15)
        for kind in ("weft-standalone", "weft-agent"):  # weft's own log times its handlers
            assert fam[kind]["inside_weft"]["add_ms"]["n"] == fam[kind]["inside_weft"]["del_ms"]["n"] == 10
        # each weft contender really ran the way it claims (weft's own log says how)
        assert set(fam["weft-agent"]["via"]) == {"agent"}
        assert set(fam["weft-standalone"]["via"]) == {"standalone"}
        assert 0 < fam["weft-agent"]["agent_rss_mib"] < 1024

    par = figures["parallel"]
    for name, version in FAMILIES:
        fam = half(par, name)
        for kind in kinds_of(KINDS, version):
            assert fam[kind]["errors"] == {} and fam[kind]["distinct_ips"] == 10, fam[kind]
            assert fam[kind]["families"] == [version], (name, kind, fam[kind])
            assert fam[kind]["add_wall_s"] > 0 and fam[kind]["pods_per_s"] > 0 and fam[kind]["del_wall_s"] > 0

    scale = figures["density"]
    assert scale["prepopulated"] == 20
    for kind in KINDS:
        assert scale[kind]["errors"] == {}, scale[kind]["error_samples"]
        for key in ("add_ms_at0", "add_ms_atN", "del_ms_at0", "del_ms_atN"):
            sane_ms(scale[kind][key], 5)
        assert scale[kind]["add_ratio_atN_at0"] > 0 and scale[kind]["del_ratio_atN_at0"] > 0

    tp = figures["throughput"]
    assert tp["weft_pod_mtu"] == tp["reference_pod_mtu"] == 1450
    for topo in ("same_node", "cross_node"):
        assert tp[topo]["weft_gbps"] > 0 and tp[topo]["reference_gbps"] > 0 and tp[topo]["ratio"] > 0, tp[topo]

    sv = figures["source-validation"]  # issue 22: the default netconf validates, allowSpoofing does not
    assert sv["validation_active"] == {"on": True, "off": False}, sv["nft_tables"]
    assert all(n > 0 for n in sv["source_set_elements"]["on"].values()), sv["source_set_elements"]
    for topo in ("same_node", "cross_node"):
        for key in ("connections_per_s", "gbps"):
            assert sv[topo][key]["on"] > 0 and sv[topo][key]["off"] > 0 and sv[topo][key]["ratio"] > 0, sv[topo]
        assert sv[topo]["connection_errors"] == {"on": 0, "off": 0}, sv[topo]
    for side in ("on", "off"):
        sane_ms(sv["add_del"][side]["add_ms"], 2)
        sane_ms(sv["add_del"][side]["del_ms"], 2)

    wg = figures["wireguard"]
    assert wg["weft_implementation"] == wg["reference_implementation"] in ("kernel", "userspace"), wg
    assert wg["weft_wireguard_pod_mtu"] == wg["reference_pod_mtu"] == 1440 and wg["weft_vxlan_pod_mtu"] == 1450
    for kind in ("weft_wireguard", "weft_vxlan", "reference_wireguard"):
        assert wg[kind]["gbps"] > 0, wg
    assert wg["ratio_vs_reference"] > 0 and wg["ratio_vs_vxlan"] > 0

    conv = figures["convergence"]
    assert conv["nodes"] == 3 and conv["missing"] == 0 and conv["kernel_mismatches"] == []
    for phase in ("add", "remove"):
        assert conv[phase]["n"] == 3 * conv["leases"]  # the synthetic node is no agent: all 3 program it
        assert 0 <= conv[phase]["p50_ms"] <= conv[phase]["max_ms"], conv[phase]
    rss = conv["agent_rss_mib"]
    assert rss["agents"] == 3 and rss["pids_are_weftd"] and 5 < rss["mean"] <= rss["max"] < 1024

    cri = figures["cri"]  # both containerd releases, each with its own reference plugins and cniVersion
    assert set(cri["releases"]) == {"1.6", "2.1"} and cri["rounds"] == 2
    assert {name: (rel["reference_plugins_version"], rel["cni_version"]) for name, rel in cri["releases"].items()} \
        == {"1.6": ("1.1.1", "1.0.0"), "2.1": ("1.9.1", "1.1.0")}
    for rel in cri["releases"].values():
        for name, version in FAMILIES:  # the IPv6-only handlers on the same containerds
            fam = half(rel, name)
            for phase in (fam, fam["resident"]):
                for handler in ("weft", "weft_standalone", "reference"):
                    sane_ms(phase[handler]["run_ms"], 2)
                    sane_ms(phase[handler]["stop_ms"], 2)
                    assert phase[handler]["pod_ip_families"] == [version], (name, handler, phase[handler])
                for handler, via in (("weft", "agent"), ("weft_standalone", "standalone")):  # weft's log says how
                    assert phase[handler]["add_in_handlers_ms"]["n"] == 2 and phase[handler]["via"] == [via], phase
                assert phase["run_p50_ratio"] > 0 and phase["standalone_run_p50_ratio"] > 0
        assert all(ms > 0 for ms in rel["exec_ms"].values()), rel["exec_ms"]

    # every target was measured, judged by its own rule, and printed with that verdict
    printed = {cells[0]: cells[-1] for cells in ([c.strip() for c in line.strip("|").split("|")]
                                                 for line in proc.stdout.splitlines() if line.startswith("| "))}
    assert len(data["targets"]) >= 15
    for check in data["targets"]:
        value, limit = check["value"], check["limit"]
        assert value is not None, check
        if abs(value - limit) > 0.001:  # the value is rounded to 3 places; a tie could go either way
            assert check["pass"] is (value <= limit if check["op"] == "<=" else value >= limit), check
        assert printed.get(check["target"], "").startswith("PASS" if check["pass"] else "MISS"), \
            (check, printed.get(check["target"]))
    for label in ("Go bridge+host-local 1.9.1", "Go bridge+host-local 1.1", "weft standalone", "weft agent",
                  "same node", "cross node", "new lease", "containerd 1.6", "containerd 2.1", "Targets",
                  "IPv6-only network"):
        assert label in proc.stdout
    # every figure's table in the docs (the copy) is now this run's, and nothing else moved
    assert "--smoke" in meta["command"], meta["command"]
    pages = doc_tables.pages(str(docs))
    owner = doc_tables.where(pages)
    assert set(owner) == FIGURES
    for name, path in owner.items():
        start, end = doc_tables.markers(pages[path], path)[name]
        assert pages[path][start:end].strip() == doc_tables.render(name, figures[name], meta), name
        assert f"table rewritten: {path} ({name})" in proc.stdout
    for path, text in pages.items():
        with open(os.path.join(REPO, "docs", os.path.basename(path))) as handle:
            assert doc_tables.without_blocks(text, path) == doc_tables.without_blocks(handle.read(), path), path
    assert (docs / "scale.svg").read_bytes() == (out / "scale.svg").read_bytes()

    made = set(data["namespaces_made"])
    assert len(made) > 3 * 10
    assert not made & netns_names(), "the benchmark left namespaces behind"
