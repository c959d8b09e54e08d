"""Many kernel entries written in a few netlink round trips (the agent's first programming).

Netlink.replace_* send one request and wait for its answer through pyroute2's asyncio
loop: about 1 ms per entry, 15 s for the 15,000 entries of a 5,000-node cluster.  Here
the same requests (NLM_F_CREATE | NLM_F_REPLACE, as `ip ... replace` sends them) are
encoded with pyroute2's message classes, packed many to a send() on a plain blocking
socket, and the kernel's acknowledgements are read back afterwards; each failure is
returned with its position, so callers report the entry that failed and go on.
"""

import itertools
import struct

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_NEWNEIGH, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .constants import (AF_BRIDGE, AF_INET, AF_INET6, FAMILY, NTF_SELF, NUD_PERMANENT, RT_SCOPE_UNIVERSE,
                        RT_TABLE_MAIN, RTNH_F_ONLINK, WEFT_RTPROT)
from .errors import NetlinkError
from .rtnl import RouteSocket

NLM_F_REPLACE = 0x100
NLMSG_ERROR = 2
PER_SEND = 256          # requests per send(): the acknowledgements fit the receive buffer
_HEADER = struct.Struct("=IHHII")
_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE


class Batch(RouteSocket):
    """One plain rtnetlink socket in this network namespace (or in netns_path)."""

    def replace_neighbours(self, ifindex: int, entries) -> dict:
        """[(ip, mac)] as permanent neighbours on ifindex; {position: NetlinkError}."""
        def messages():
            for ip, mac in entries:
                msg = ndmsg()
                msg["family"] = AF_INET if ip.version == 4 else AF_INET6
                msg["ifindex"], msg["state"] = ifindex, NUD_PERMANENT
                msg["attrs"] = [("NDA_DST", str(ip)), ("NDA_LLADDR", mac)]
                yield (msg, RTM_NEWNEIGH, f"replace neighbour {ip} lladdr {mac}")
        return self._send_all(messages())

    def replace_fdbs(self, ifindex: int, entries) -> dict:
        """[(mac, dst ip)] as permanent FDB entries of ifindex itself; {position: error}."""
        def messages():
            for mac, dst in entries:
                msg = ndmsg()
                msg["family"], msg["ifindex"] = AF_BRIDGE, ifindex
                msg["state"], msg["flags"] = NUD_PERMANENT, NTF_SELF
                msg["attrs"] = [("NDA_LLADDR", mac), ("NDA_DST", str(dst))]
                yield (msg, RTM_NEWNEIGH, f"replace fdb {mac} dst {dst}")
        return self._send_all(messages())

    def replace_routes(self, entries) -> dict:
        """[(dst, gateway, oif, onlink)] as weft's main-table routes; {position: error}."""
        def messages():
            for dst, gateway, oif, onlink in entries:
                msg = rtmsg()
                msg["family"], msg["dst_len"] = FAMILY[dst.version], dst.prefixlen
                # gateway None: a device route (e.g. into a WireGuard device); scope universe
                # like netlink.replace_route's, so delete_weft_route matches it
                msg["table"], msg["proto"], msg["scope"], msg["type"] = RT_TABLE_MAIN, WEFT_RTPROT, RT_SCOPE_UNIVERSE, 1
                msg["flags"] = RTNH_F_ONLINK if onlink else 0
                msg["attrs"] = [("RTA_DST", str(dst.network_address)), ("RTA_OIF", oif)]
                if gateway is not None:
                    msg["attrs"].append(("RTA_GATEWAY", str(gateway)))
                yield (msg, RTM_NEWROUTE, f"replace route {dst} via {gateway or 'the device'}")
        return self._send_all(messages())

    def _send_all(self, messages) -> dict:
        """Send an iterator of (msg, type, what), PER_SEND at a time: the messages are
        made as they are sent (15,000 of pyroute2's message objects at once set the
        agent's RSS peak at start-up)."""
        failures, start = {}, 0
        while True:
            chunk = list(itertools.islice(messages, PER_SEND))
            if not chunk:
                return failures
            failures.update(self._send_some(chunk, start))
            start += len(chunk)

    def _send_some(self, messages, offset: int) -> dict:
        pending, chunks = {}, []
        for position, (msg, kind, what) in enumerate(messages, offset):
            self.seq += 1
            msg["header"]["type"], msg["header"]["flags"] = kind, _FLAGS
            msg["header"]["sequence_number"] = self.seq
            msg.encode()
            chunks.append(msg.data)
            pending[self.seq] = (position, what)
        self.sock.send(b"".join(chunks))
        failures = {}
        while pending:
            data = self.sock.recv(1 << 20)
            at = 0
            while at + _HEADER.size <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, at)
                if length < _HEADER.size:
                    break
                if kind == NLMSG_ERROR and seq in pending:
                    position, what = pending.pop(seq)
                    code = -struct.unpack_from("=i", data, at + _HEADER.size)[0]
                    if code:
                        failures[position] = NetlinkError(code, what)
                at += (length + 3) & ~3
        return failures
