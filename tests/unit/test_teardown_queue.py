"""agent/teardown_queue.py's bookkeeping (pure: no worker started, no kernel)."""

import logging

from cni_plugin.agent import teardown_queue
from cni_plugin.agent.teardown_queue import QUEUE_SIZE, TeardownQueue


def test_the_queue_is_bounded_and_a_full_queue_says_so(tmp_path):
    queue = TeardownQueue(str(tmp_path / "state"), logging.getLogger("test"))
    assert all(queue.submit("/data", f"wft{i:012x}", 1.0) for i in range(QUEUE_SIZE))
    assert not queue.submit("/data", "wftffffffffffff", 1.0)  # full: the DEL finishes it itself
    assert queue.submit("/data", "wft000000000000", 1.0)  # already queued: nothing added
    assert queue.pending() == QUEUE_SIZE


def test_data_dirs_are_remembered_across_restarts(tmp_path):
    state = str(tmp_path / "state")
    TeardownQueue(state, logging.getLogger("test")).submit("/var/lib/weft/cni", "wft000000000001", 1.0)
    again = TeardownQueue(state, logging.getLogger("test"))
    assert again.dirs == {"/var/lib/weft/cni"}
    with open(tmp_path / "state" / teardown_queue.DIRS_FILE) as handle:
        assert handle.read() == "/var/lib/weft/cni\n"
