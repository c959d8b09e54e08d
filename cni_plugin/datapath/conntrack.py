"""The node's conntrack entries of a released pod address, flushed (pyroute2's
ctnetlink client; the agent's background teardown is its one caller).

An entry survives its pod: a later pod given the same address would have its packets
matched as the old pod's connections (accepted as ESTABLISHED by a policy that would
refuse a new one, or NATed as someone else's).  Entries are found by the kernel
(filtered dumps, Linux 5.8+: the address as source or destination of the original or
the reply direction, so DNATed and masqueraded flows go too) and deleted one by one;
one already gone is not an error.
"""

import errno
import socket

FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


def flush(ips) -> int:
    """Delete every entry that has one of `ips` (ip_address objects) in either
    direction; the number deleted."""
    from pyroute2.conntrack import Conntrack, NFCTAttrTuple
    from pyroute2.netlink.exceptions import NetlinkError as Pyroute2Error

    from .errors import DatapathError

    removed = 0
    for version in sorted({ip.version for ip in ips}):
        family = FAMILIES[version]
        try:
            with Conntrack(nfgen_family=family) as ct:
                entries = {}
                for ip in (ip for ip in ips if ip.version == version):
                    for direction in ("tuple_orig", "tuple_reply"):
                        for end in ("saddr", "daddr"):
                            match = NFCTAttrTuple(family=family, **{end: str(ip)})
                            for entry in ct.dump_entries(**{direction: match}):
                                entries[entry.id] = entry
                for entry in entries.values():
                    try:
                        ct.delete(entry)
                        removed += 1
                    except Pyroute2Error as exc:
                        if exc.code != errno.ENOENT:
                            raise
        except (Pyroute2Error, OSError) as exc:
            raise DatapathError(f"cannot flush the conntrack entries of {', '.join(map(str, ips))}: {exc}") \
                from None
    return removed
