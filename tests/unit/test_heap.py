"""agent/heap.py: when weftd settles its heap, and that a settle frees cyclic garbage
hidden in the frozen generation (the backstop that makes freezing safe)."""

import gc
import weakref

import pytest

from cni_plugin.agent import heap


class _Cycle:
    def __init__(self):
        self.me = self


@pytest.fixture
def thawed():
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.collect()


def test_a_settle_frees_cycles_that_were_frozen_alive_and_died_since(thawed):
    cycle = _Cycle()
    alive = weakref.ref(cycle)
    heap.settle(first=True)  # the cycle is alive: frozen
    del cycle       # now cyclic garbage, in the permanent generation
    gc.collect()
    assert alive() is not None  # a plain collection skips frozen objects: this is what a settle is for
    heap.settle()
    assert alive() is None
    assert gc.get_freeze_count() > 0


def test_a_frozen_object_is_still_freed_by_its_reference_count(thawed):
    plain = type("Plain", (), {})()
    alive = weakref.ref(plain)
    heap.settle()
    del plain
    assert alive() is None


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_schedule_waits_for_the_first_programmed_listing_then_settles_every_interval():
    clock, done = _Clock(), []
    settler = heap.HeapSettler(300.0, clock=clock, action=lambda first: done.append((clock.now, first)))
    assert settler.tick(False) == heap.HeapSettler.NOT_READY_POLL and done == []
    clock.now = 105.0
    assert settler.tick(True) == 300.0 and done == [(105.0, True)]  # the first programmed listing: at once
    clock.now = 110.0
    assert settler.tick(False) == 295.0 and len(done) == 1  # not due; readiness no longer matters
    clock.now = 405.0
    assert settler.tick(False) == 300.0 and done == [(105.0, True), (405.0, False)]
