"""The overlay's status "peers" lines, kept sorted one event at a time, are always the
sorted listing of the current peers (pure logic: no kernel, no etcd)."""

import random
from types import SimpleNamespace

from cni_plugin.agent.controllers.overlay import OverlayController


def _lease(n: int, generation: int = 0):
    return SimpleNamespace(key=f"10.{n // 256}.{n % 256}.0-24", node_name=f"node-{n}-{generation}",
                           underlay_text=f"172.16.{n // 256}.{n % 256}")


def test_peer_lines_follow_every_event_and_equal_a_full_rebuild():
    rng = random.Random(17)
    agent = SimpleNamespace(peers={f"k{n}": _lease(n) for n in range(200)})
    overlay = OverlayController(agent)
    assert overlay._peer_lines() == sorted(OverlayController._line(p) for p in agent.peers.values())
    for step in range(500):
        before = agent.peers
        after = dict(before)
        changed = set()
        for _ in range(rng.choice((1, 1, 1, 3))):
            n = rng.randrange(400)
            key = f"k{n}"
            changed.add(key)
            if key in after and rng.random() < 0.5:
                del after[key]
            else:
                after[key] = _lease(n, step)  # new, or the same key with new data
        agent.peers = after
        overlay._relist_lines(changed, before, after)
        assert overlay._lines_for is after  # kept in step, not rebuilt
        assert overlay._peer_lines() == sorted(OverlayController._line(p) for p in after.values())


def test_lines_out_of_step_are_rebuilt():
    agent = SimpleNamespace(peers={"a": _lease(1)})
    overlay = OverlayController(agent)
    overlay._relist_lines({"a"}, {}, agent.peers)  # never listed: not in step
    agent.peers = {"b": _lease(2)}  # replaced by a relist
    assert overlay._peer_lines() == [OverlayController._line(_lease(2))]
