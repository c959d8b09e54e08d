"""Which policy decided a connection, as the kernel marked it: the conntrack mark layout.

The policy table's accepting rules (policy/compile.py) set bits of the connection's
ct mark on its first packet, keeping the bits they do not own:

    bits 20-31  (0xFFF00000)  ingress policy number: the policy whose ingress rule accepted
    bits  8-19  (0x000FFF00)  egress policy number: the policy whose egress rule accepted
    bits  0-7   (0x000000FF)  not weft's: left as other software set them

Number 0 means no policy of that direction decided (the pod was not isolated that
way).  Numbers are given per node and network by PolicyNumbers, persisted under the
agent's --state-dir so connections that outlive an agent restart still name their
policy; a number is not given to another policy while it is on record (only when all
4095 are taken are the numbers of deleted policies reused, oldest first).

Denied attempts carry the same number as the last field of their element in the
denied-flow sets (one element per isolating policy, rate-bounded).
"""

import json
import os

INGRESS_SHIFT, EGRESS_SHIFT = 20, 8
FIELD = 0xFFF
INGRESS_MASK, EGRESS_MASK = FIELD << INGRESS_SHIFT, FIELD << EGRESS_SHIFT
WEFT_MASK = INGRESS_MASK | EGRESS_MASK
SHIFTS = {"ingress": INGRESS_SHIFT, "egress": EGRESS_SHIFT}
NUMBERS_FILE = "flow-policy-numbers.json"


def mark_bits(direction: str, number: int) -> tuple:
    """(mask of the direction's field, value to set) for `number`."""
    shift = SHIFTS[direction]
    return FIELD << shift, (number & FIELD) << shift


def decode(mark: int) -> tuple:
    """(ingress number, egress number) of a ct mark."""
    return (mark >> INGRESS_SHIFT) & FIELD, (mark >> EGRESS_SHIFT) & FIELD


class PolicyNumbers:
    """policy ref <-> number (1..4095), kept in `path` (JSON {ref: number}) when given."""

    def __init__(self, path: str = None):
        self.path = path
        self.by_ref = {}
        self.order = []  # refs, oldest first (the eviction order)
        if path:
            try:
                with open(path, encoding="utf-8") as handle:
                    stored = json.load(handle)
                for ref, number in stored.items():
                    if isinstance(ref, str) and isinstance(number, int) and 0 < number <= FIELD:
                        self.by_ref[ref] = number
                        self.order.append(ref)
            except (OSError, ValueError, AttributeError):
                pass
        self.by_number = {n: r for r, n in self.by_ref.items()}

    def number(self, ref: str, current=()) -> int:
        """The number of `ref`, given now if it has none; `current`: refs in use (never
        evicted)."""
        found = self.by_ref.get(ref)
        if found is not None:
            return found
        free = next((n for n in range(1, FIELD + 1) if n not in self.by_number), None)
        if free is None:
            keep = set(current) | {ref}
            victim = next((r for r in self.order if r not in keep), None)
            if victim is None:
                return FIELD  # more policies than numbers: marked as "a policy beyond 4094"
            free = self.by_ref.pop(victim)
            self.order.remove(victim)
            del self.by_number[free]
        self.by_ref[ref], self.by_number[free] = free, ref
        self.order.append(ref)
        self._save()
        return free

    def ref(self, number: int):
        return self.by_number.get(number) if number else None

    def _save(self):
        if not self.path:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            temporary = self.path + ".tmp"
            with open(temporary, "w", encoding="utf-8") as handle:
                json.dump({r: self.by_ref[r] for r in self.order}, handle)
            os.replace(temporary, self.path)
        except OSError:
            pass  # a read-only state dir: numbers hold for this run
