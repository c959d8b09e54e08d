"""Choosing addresses: pure logic over a RangeSet, no I/O.

Addresses are walked lazily as integers, so an IPv6 /64 is never materialized.
"""

from collections.abc import Callable, Iterator

from ..cni.errors import INVALID_NETCONF, CniError
from .config import AddressRange, RangeSet


def _resume_point(range_set: RangeSet, last_reserved) -> tuple[int, int]:
    """(range position, first address as int) to continue the walk after last_reserved."""
    if last_reserved is not None:
        for position, r in enumerate(range_set.ranges):
            if r.contains(last_reserved):
                return position, int(last_reserved) + 1
    return 0, int(range_set.ranges[0].start)


def _walk(range_set: RangeSet, last_reserved) -> Iterator[tuple[AddressRange, int]]:
    """Every address of every range, once, starting just after last_reserved and wrapping."""
    ranges = range_set.ranges
    position, first = _resume_point(range_set, last_reserved)
    for step in range(len(ranges)):
        r = ranges[(position + step) % len(ranges)]
        low = first if step == 0 else int(r.start)
        for n in range(low, int(r.end) + 1):
            yield r, n
    resumed = ranges[position]
    for n in range(int(resumed.start), first):  # the part of the first range we skipped
        yield resumed, n


def candidates(range_set: RangeSet, last_reserved=None) -> Iterator:
    """Allocatable addresses of range_set, each exactly once, round-robin after last_reserved.

    The gateway, network and (IPv4) broadcast addresses are never offered.
    """
    for r, n in _walk(range_set, last_reserved):
        ip = type(r.start)(n)
        if not r.is_reserved(ip):
            yield ip


def free_addresses(range_set: RangeSet, is_taken: Callable, last_reserved=None) -> Iterator:
    """candidates() without the addresses for which is_taken(ip) is true."""
    return (ip for ip in candidates(range_set, last_reserved) if not is_taken(ip))


def first_free(range_set: RangeSet, is_taken: Callable, last_reserved=None):
    """The next free address after last_reserved, or None when the range set is full."""
    return next(free_addresses(range_set, is_taken, last_reserved), None)


def locate(range_sets, ip) -> tuple[RangeSet, AddressRange]:
    """The range set and range a requested ip belongs to; CniError 7 if none or reserved."""
    for range_set in range_sets:
        r = range_set.range_of(ip)
        if r is None:
            continue
        if r.is_reserved(ip):
            raise CniError(
                INVALID_NETCONF,
                f"requested IP {ip} cannot be allocated: it is the gateway, network or "
                f"broadcast address of {r.subnet} ({r.where})",
            )
        return range_set, r
    known = "; ".join(s.describe() for s in range_sets)
    raise CniError(INVALID_NETCONF, f"requested IP {ip} is not in any configured range: {known}")
