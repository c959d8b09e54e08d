"""Many kernel entries written in a few netlink round trips (the agent's first programming).

Netlink.replace_* send one request and wait for its answer through pyroute2's asyncio
loop: about 1 ms per entry, 15 s for the 15,000 entries of a 5,000-node cluster.  Here
the same requests (NLM_F_CREATE | NLM_F_REPLACE, as `ip ... replace` sends them) are
encoded by nlcodec.py, packed many to a send() on a plain blocking socket, and the kernel's acknowledgements are read back afterwards; each failure is
returned with its position, so callers report the entry that failed and go on.
"""

import itertools

from . import nlcodec as nl
from .constants import (AF_BRIDGE, AF_INET, AF_INET6, FAMILY, NTF_SELF, NUD_PERMANENT, RT_SCOPE_UNIVERSE,
                        RT_TABLE_MAIN, RTNH_F_ONLINK, WEFT_RTPROT)
from .errors import NetlinkError
from .rtnl import RouteSocket

PER_SEND = 256          # requests per send(): the acknowledgements fit the receive buffer
_FLAGS = nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_REPLACE


class Batch(RouteSocket):
    """One plain rtnetlink socket in this network namespace (or in netns_path)."""

    def replace_neighbours(self, ifindex: int, entries) -> dict:
        """[(ip, mac)] as permanent neighbours on ifindex; {position: NetlinkError}."""
        def messages():
            for ip, mac in entries:
                yield (nl.RTM_NEWNEIGH,
                       nl.ndmsg(nl.attr(nl.NDA_DST, ip.packed), nl.attr(nl.NDA_LLADDR, nl.mac_bytes(mac)),
                                family=AF_INET if ip.version == 4 else AF_INET6, ifindex=ifindex,
                                state=NUD_PERMANENT),
                       f"replace neighbour {ip} lladdr {mac}")
        return self._send_all(messages())

    def replace_fdbs(self, ifindex: int, entries) -> dict:
        """[(mac, dst ip)] as permanent FDB entries of ifindex itself; {position: error}."""
        def messages():
            for mac, dst in entries:
                yield (nl.RTM_NEWNEIGH,
                       nl.ndmsg(nl.attr(nl.NDA_LLADDR, nl.mac_bytes(mac)), nl.attr(nl.NDA_DST, dst.packed),
                                family=AF_BRIDGE, ifindex=ifindex, state=NUD_PERMANENT, flags=NTF_SELF),
                       f"replace fdb {mac} dst {dst}")
        return self._send_all(messages())

    def replace_routes(self, entries) -> dict:
        """[(dst, gateway, oif, onlink)] as weft's main-table routes; {position: error}."""
        def messages():
            for dst, gateway, oif, onlink in entries:
                attrs = [nl.attr(nl.RTA_DST, dst.network_address.packed), nl.u32_attr(nl.RTA_OIF, oif)]
                if gateway is not None and gateway.version != dst.version:  # IPv4 via an IPv6 next hop
                    attrs.append(nl.via(gateway))
                elif gateway is not None:
                    attrs.append(nl.attr(nl.RTA_GATEWAY, gateway.packed))
                # gateway None: a device route (e.g. into a WireGuard device); scope universe
                # like netlink.replace_route's, so delete_weft_route matches it
                yield (nl.RTM_NEWROUTE,
                       nl.rtmsg(*attrs, family=FAMILY[dst.version], dst_len=dst.prefixlen, table=RT_TABLE_MAIN,
                                protocol=WEFT_RTPROT, scope=RT_SCOPE_UNIVERSE, type_=nl.RTN_UNICAST,
                                flags=RTNH_F_ONLINK if onlink else 0),
                       f"replace route {dst} via {gateway or 'the device'}")
        return self._send_all(messages())

    def _send_all(self, messages) -> dict:
        """Send an iterator of (type, body, what), PER_SEND at a time: the messages are
        encoded as they are sent (all of them at once set the agent's RSS peak at
        start-up when they were pyroute2 objects; bytes are cheaper, the rule stays)."""
        failures, start = {}, 0
        while True:
            chunk = list(itertools.islice(messages, PER_SEND))
            if not chunk:
                return failures
            failures.update(self._send_some(chunk, start))
            start += len(chunk)

    def _send_some(self, messages, offset: int) -> dict:
        pending, chunks = {}, []
        for position, (kind, body, what) in enumerate(messages, offset):
            self.seq += 1
            chunks.append(nl.message(kind, _FLAGS, self.seq, body))
            pending[self.seq] = (position, what)
        self.sock.send(b"".join(chunks))
        failures = {}
        while pending:
            data = self.sock.recv(1 << 20)
            for at, length, kind, _, seq in nl.messages(data):
                if kind == nl.NLMSG_ERROR and seq in pending:
                    position, what = pending.pop(seq)
                    code = nl.error_code(data, at, length)
                    if code:
                        failures[position] = NetlinkError(code, what)
        return failures
