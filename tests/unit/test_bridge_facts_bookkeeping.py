"""BridgeFacts' bookkeeping (pure: the notifications are a stand-in; the kernel side is
tests/netns/test_bridge_facts.py)."""

import time

from cni_plugin.datapath.bridge_facts import BridgeFacts
from cni_plugin.datapath.nlcodec import Link

BRIDGE = Link(index=7, name="cbr0", kind="bridge", mtu=1500, up=True, master=None, address="02:00:00:00:00:01")
KEY = ("cbr0", 1500, False, ())


class Notifications:
    """changed() answers what the test queued; messages counts what was read."""

    def __init__(self):
        self.watched = {}
        self.messages = 0
        self.queued = []  # True: a message naming a watched link, False: another

    def changed(self) -> bool:
        self.messages += len(self.queued)
        relevant = any(self.queued)
        self.queued = []
        return relevant


def test_recorded_facts_serve_until_a_message_names_the_bridge():
    changes = Notifications()
    facts = BridgeFacts(changes=changes)
    link, token = facts.known(KEY)
    assert link is None
    facts.record(KEY, BRIDGE, token, time.monotonic())
    assert changes.watched == {7: BRIDGE}
    changes.queued = [False]  # another link's news
    assert facts.known(KEY)[0] == BRIDGE
    assert facts.known(("cbr0", 1400, False, ()))[0] is None  # other settings: not checked
    changes.queued = [True]
    assert facts.known(KEY)[0] is None


def test_a_check_during_which_another_call_read_notifications_is_not_recorded():
    changes = Notifications()
    facts = BridgeFacts(changes=changes)
    _, token = facts.known(KEY)  # this call's check begins
    changes.queued = [False]  # judged against no watched link: could have been the bridge's
    facts.known(("cbr1", 1500, False, ()))  # another call drains meanwhile
    facts.record(KEY, BRIDGE, token, time.monotonic())
    assert facts.known(KEY)[0] is None


def test_facts_older_than_max_age_are_checked_again():
    changes = Notifications()
    facts = BridgeFacts(max_age=5.0, changes=changes)
    _, token = facts.known(KEY)
    facts.record(KEY, BRIDGE, token, time.monotonic() - 6.0)
    assert facts.known(KEY)[0] is None


class Overflowing(Notifications):
    """An overflow (ENOBUFS) or a failed read: changed without a message counted."""

    def __init__(self):
        super().__init__()
        self.overflow = False

    def changed(self) -> bool:
        if self.overflow:
            self.overflow = False
            return True
        return super().changed()


def test_a_check_begun_before_an_overflow_is_not_recorded():
    # the bridge's deletion was lost in the overflow: what the check read may be gone
    changes = Overflowing()
    facts = BridgeFacts(changes=changes)
    _, token = facts.known(KEY)  # ADD A's check begins
    changes.overflow = True
    facts.known(("cbr1", 1500, False, ()))  # ADD B drains: an overflow, no message read
    facts.record(KEY, BRIDGE, token, time.monotonic())  # ADD A records what it read
    assert facts.known(KEY)[0] is None  # ADD C checks the bridge itself
