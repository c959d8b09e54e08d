"""The node's conntrack entries of a released pod address, flushed (ctnetlink over
nlcodec.py; the background teardown of a DEL is the caller).

An entry survives its pod: a later pod given the same address would have its packets
matched as the old pod's connections (accepted as ESTABLISHED by a policy that would
refuse a new one, or NATed as someone else's).  The kernel finds the entries (dumps
filtered by CTA_FILTER, Linux 5.8+) and each is deleted by the original tuple the dump
gave (handed back unparsed); one already gone is not an error.  Two dumps per address
cover every entry it is in: the original direction's source (connections the pod
opened, masqueraded or not) and the reply direction's source (connections to the pod,
straight or DNATed to it from a Service address).  Each dump walks the kernel's whole
conntrack hash (all namespaces share it: ~9 ms for 262,144 buckets here).  pyroute2's
client took ~130 ms a flush (filtered dumps through its event loop, holding the
interpreter): too much for a queue that follows pod churn.
"""

import errno

from . import nlcodec as nl
from .errors import DatapathError, NetlinkError
from .rtnl import RouteSocket


def flush(ips) -> int:
    """Delete every entry of this namespace that has one of `ips` (ipaddress objects)
    in either direction; the number deleted."""
    removed = 0
    try:
        with RouteSocket(protocol=nl.NETLINK_NETFILTER) as ct:
            for ip in ips:
                found = {}
                for reply in (False, True):  # the source of either direction: see the docstring
                    for family, entry in ct._request(nl.CT_GET, nl.NLM_F_REQUEST | nl.NLM_F_DUMP,
                                                     nl.conntrack_dump(ip, reply, source=True),
                                                     f"list the conntrack entries of {ip}", nl.decode_conntrack):
                        found[entry] = family
                for entry, family in found.items():
                    try:
                        ct._request(nl.CT_DELETE, nl.NLM_F_REQUEST | nl.NLM_F_ACK, nl.conntrack_delete(family, entry),
                                    f"delete a conntrack entry of {ip}")
                        removed += 1
                    except NetlinkError as exc:
                        if exc.code != errno.ENOENT:  # expired meanwhile
                            raise
    except NetlinkError as exc:
        if exc.code == errno.ENOENT and not removed:  # no conntrack in this namespace's kernel: nothing kept
            return 0
        raise DatapathError(f"cannot flush the conntrack entries of {', '.join(map(str, ips))}: {exc}") from None
    except OSError as exc:
        raise DatapathError(f"cannot flush the conntrack entries of {', '.join(map(str, ips))}: {exc}") from None
    return removed

