"""The README's demo command, run as written, non-interactively."""

import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def demo_namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("weft-demo-")}


def test_make_demo(tmp_path):
    proc = subprocess.run(["make", "-s", "-C", REPO, "demo"], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last == {"demo": "single-node", "result": "ok"}
    assert "pod-a  -> pod-b" in proc.stdout and "FAILED" not in proc.stdout
    assert "held by demo/pod-b" in proc.stdout
    assert demo_namespaces() == set(), "the demo left namespaces behind"
