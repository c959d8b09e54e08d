"""Forged frames from inside a pod, for source-validation tests (stdlib only).

Runs inside a pod's network namespace (`ip netns exec <pod> python -m lab.spoof ...`)
and writes whole Ethernet frames on the pod's interface through an AF_PACKET socket,
so it chooses every header field, the Ethernet source included:

    udp DST PORT [--src IP] [--src-mac MAC] [--payload TEXT] [--dev eth0] [--count N]
        a UDP datagram to DST:PORT claiming source IP (default: the pod's own address
        of DST's family) and Ethernet source MAC (default: the interface's); the
        destination MAC is the next hop's: DST itself on the same subnet, else the
        gateway (`ip route get`), resolved through the kernel's neighbour table
    arp-reply TARGET --claim IP [--src-mac MAC] [--broadcast] [--dev eth0]
        an ARP reply telling TARGET that IP is at the interface's MAC (or --src-mac);
        --broadcast sends it to ff:ff:ff:ff:ff:ff (a gratuitous ARP)
    na --claim IPV6 [--dst ff02::1] [--src IPV6] [--src-mac MAC] [--dev eth0]
        an unsolicited neighbour advertisement (Override set, Solicited clear) that
        IPV6 is at the interface's MAC, from the pod's link-local address by default
    send DST PORT [--payload TEXT]
        an ordinary UDP datagram through the kernel's stack (the pod speaking as itself)
    listen ADDRESS PORT[,PORT...] SECONDS [--until TEXT] [--grace S]
        receive UDP on each PORT for at most SECONDS: prints "listening" once bound,
        then one JSON line {"src", "sport", "port", "payload"} per datagram; with
        --until, stops GRACE seconds (default 0.5) after a datagram whose payload is
        TEXT arrived
    neigh ADDRESS [--dev eth0]
        prints the MAC the next hop towards ADDRESS resolves to

Every verb prints one JSON line describing what it sent (addresses, MACs, bytes), so a
test can log it.  Exit status 0 on success, 1 when a next hop cannot be resolved.

The frame builders (`ether`, `ipv4`, `ipv6`, `udp`, `arp`, `neighbour_advert`, and
`checksum`) are pure functions of their arguments; tests/unit/test_spoof_frames.py
parses their output back.
"""

import argparse
import ipaddress
import json
import select
import socket
import struct
import subprocess
import sys
import time

ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD
PROTO_UDP, PROTO_ICMPV6 = 17, 58
BROADCAST = "ff:ff:ff:ff:ff:ff"
RESOLVE_ATTEMPTS = 20
RESOLVE_INTERVAL = 0.1


# -- frame builders (pure) ------------------------------------------------------------------
def mac_bytes(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"{mac!r} is not a MAC address")
    return raw


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data: ones' complement of the ones'
    complement sum of its 16-bit big-endian words (an odd byte padded with zero)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ether(dst_mac: str, src_mac: str, ethertype: int, payload: bytes) -> bytes:
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, protocol: int, payload: bytes, ttl: int = 64, ident: int = 0x5eed) -> bytes:
    """An IPv4 header (no options, DF clear) with its checksum, then payload."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0, ttl, protocol, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, hop_limit: int = 64) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hop_limit,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + payload


def pseudo_header(src: str, dst: str, protocol: int, length: int) -> bytes:
    """The pseudo-header UDP and ICMPv6 checksums cover (RFC 768, RFC 8200 8.1)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version != d.version:
        raise ValueError(f"{src} and {dst} are not of one family")
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, protocol, length)
    return s.packed + d.packed + struct.pack("!I3xB", length, protocol)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header + payload whose checksum covers the pseudo-header of src/dst."""
    length = 8 + len(payload)
    segment = struct.pack("!HHHH", sport, dport, length, 0) + payload
    value = checksum(pseudo_header(src, dst, PROTO_UDP, length) + segment) or 0xFFFF
    return segment[:6] + struct.pack("!H", value) + segment[8:]


def udp_frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    datagram = udp(src, dst, sport, dport, payload)
    if ipaddress.ip_address(dst).version == 4:
        return ether(dst_mac, src_mac, ETH_P_IP, ipv4(src, dst, PROTO_UDP, datagram))
    return ether(dst_mac, src_mac, ETH_P_IPV6, ipv6(src, dst, PROTO_UDP, datagram))


def arp(op: int, sender_mac: str, sender_ip: str, target_mac: str, target_ip: str) -> bytes:
    """An Ethernet/IPv4 ARP packet (op 1 request, 2 reply)."""
    return struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, op,
                       mac_bytes(sender_mac), ipaddress.IPv4Address(sender_ip).packed,
                       mac_bytes(target_mac), ipaddress.IPv4Address(target_ip).packed)


def arp_reply_frame(src_mac: str, dst_mac: str, claim_ip: str, target_mac: str, target_ip: str) -> bytes:
    """An ARP reply: `claim_ip` is at `src_mac` (which is also the frame's source)."""
    return ether(dst_mac, src_mac, ETH_P_ARP, arp(2, src_mac, claim_ip, target_mac, target_ip))


def neighbour_advert(src: str, dst: str, target: str, mac: str, solicited=False, override=True,
                     router=False) -> bytes:
    """An ICMPv6 neighbour advertisement (type 136) for `target` with a target
    link-layer address option carrying `mac`, checksummed for src -> dst."""
    flags = (router << 31) | (solicited << 30) | (override << 29)
    body = struct.pack("!BBHI16s", 136, 0, 0, flags, ipaddress.IPv6Address(target).packed)
    body += struct.pack("!BB6s", 2, 1, mac_bytes(mac))
    value = checksum(pseudo_header(src, dst, PROTO_ICMPV6, len(body)) + body)
    return body[:2] + struct.pack("!H", value) + body[4:]


def multicast_mac(address: str) -> str:
    """The Ethernet group address of an IPv6 multicast address (33:33 + its last 32 bits)."""
    return mac_text(b"\x33\x33" + ipaddress.IPv6Address(address).packed[-4:])


def na_frame(src_mac: str, dst_mac: str, src: str, dst: str, target: str, mac: str) -> bytes:
    """A neighbour advertisement with hop limit 255, as RFC 4861 7.1.2 requires."""
    return ether(dst_mac, src_mac, ETH_P_IPV6,
                 ipv6(src, dst, PROTO_ICMPV6, neighbour_advert(src, dst, target, mac), hop_limit=255))


# -- the pod's own view (kernel state read with iproute2) ------------------------------------
def _ip_json(*args):
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return json.loads(out.stdout) if out.stdout.strip() else []


def own_mac(dev: str) -> str:
    return _ip_json("link", "show", "dev", dev)[0]["address"].lower()


def own_address(dev: str, version: int, scope: str = "global") -> str:
    for entry in _ip_json("addr", "show", "dev", dev):
        for info in entry.get("addr_info", []):
            if info.get("scope") == scope and ipaddress.ip_address(info["local"]).version == version \
                    and "tentative" not in info:
                return info["local"]
    raise RuntimeError(f"{dev} has no {scope} IPv{version} address")


def next_hop(dst: str):
    """(next hop address, device) of the route towards dst."""
    (route,) = _ip_json("route", "get", dst)
    return route.get("gateway", dst), route["dev"]


def _neighbour(address: str, dev: str):
    for entry in _ip_json("neigh", "show", "to", address, "dev", dev):
        if entry.get("lladdr") and not set(entry.get("state", [])) & {"FAILED", "INCOMPLETE"}:
            return entry["lladdr"].lower()
    return None


def resolve(dst: str, dev: str = None):
    """The MAC of the next hop towards dst, from the kernel's neighbour table; a UDP
    datagram to the discard port of the next hop makes the kernel resolve it first
    (bounded: RESOLVE_ATTEMPTS readings).  None when it does not resolve."""
    hop, route_dev = next_hop(dst)
    dev = dev or route_dev
    for attempt in range(RESOLVE_ATTEMPTS):
        mac = _neighbour(hop, dev)
        if mac:
            return mac
        if attempt % 5 == 0:
            family = socket.AF_INET6 if ":" in hop else socket.AF_INET
            target = f"{hop}%{dev}" if ipaddress.ip_address(hop).is_link_local else hop
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                try:
                    probe.sendto(b"weft-resolve", socket.getaddrinfo(target, 9, family, socket.SOCK_DGRAM)[0][4])
                except OSError:
                    pass
        time.sleep(RESOLVE_INTERVAL)
    return None


def transmit(dev: str, frame: bytes, count: int = 1) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((dev, 0))
        for _ in range(count):
            sock.send(frame)


# -- verbs ----------------------------------------------------------------------------------
def cmd_udp(args) -> dict:
    dst = str(ipaddress.ip_address(args.dst))
    version = ipaddress.ip_address(dst).version
    dev = args.dev
    src = args.src or own_address(dev, version)
    dst_mac = args.dst_mac or resolve(dst, dev)
    if dst_mac is None:
        raise LookupError(f"no neighbour entry for the next hop towards {dst}")
    src_mac = args.src_mac or own_mac(dev)
    frame = udp_frame(src_mac, dst_mac, src, dst, args.sport, args.port, args.payload.encode())
    transmit(dev, frame, args.count)
    return {"sent": "udp", "src": src, "dst": dst, "port": args.port, "srcMac": src_mac, "dstMac": dst_mac,
            "bytes": len(frame), "count": args.count}


def cmd_arp_reply(args) -> dict:
    dev = args.dev
    src_mac = args.src_mac or own_mac(dev)
    if args.broadcast:
        target_mac = dst_mac = BROADCAST
    else:
        target_mac = dst_mac = args.target_mac or resolve(args.target, dev)
        if dst_mac is None:
            raise LookupError(f"no neighbour entry for {args.target}")
    frame = arp_reply_frame(src_mac, dst_mac, args.claim, target_mac, args.target)
    transmit(dev, frame, args.count)
    return {"sent": "arp-reply", "claim": args.claim, "srcMac": src_mac, "target": args.target,
            "dstMac": dst_mac, "bytes": len(frame), "count": args.count}


def cmd_na(args) -> dict:
    dev = args.dev
    src_mac = args.src_mac or own_mac(dev)
    src = args.src or own_address(dev, 6, "link")
    dst = args.dst
    if ipaddress.IPv6Address(dst).is_multicast:
        dst_mac = multicast_mac(dst)
    else:
        dst_mac = args.dst_mac or resolve(dst, dev)
        if dst_mac is None:
            raise LookupError(f"no neighbour entry for {dst}")
    frame = na_frame(src_mac, dst_mac, src, dst, args.claim, args.link_mac or src_mac)
    transmit(dev, frame, args.count)
    return {"sent": "na", "claim": args.claim, "src": src, "dst": dst, "srcMac": src_mac, "dstMac": dst_mac,
            "bytes": len(frame), "count": args.count}


def cmd_send(args) -> dict:
    family = socket.AF_INET6 if ":" in args.dst else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((args.dst, args.port))  # binds the source the kernel chose, to report it
        for _ in range(args.count):
            try:
                sock.send(args.payload.encode())
            except ConnectionRefusedError:  # an ICMP port unreachable for the previous one
                sock.send(args.payload.encode())
        src = sock.getsockname()[0]
    return {"sent": "send", "src": src, "dst": args.dst, "port": args.port, "count": args.count}


def cmd_neigh(args) -> dict:
    mac = resolve(args.dst, args.dev)
    if mac is None:
        raise LookupError(f"no neighbour entry for the next hop towards {args.dst}")
    return {"dst": args.dst, "nextHop": next_hop(args.dst)[0], "mac": mac}


def listen(address: str, ports, seconds: float, until: str = None, grace: float = 0.5, out=sys.stdout):
    """Print one JSON line per datagram for at most `seconds` (see the module doc);
    ports: one port or several."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    socks = {}
    try:
        for port in ([ports] if isinstance(ports, int) else ports):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            socks[sock] = port
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
        print("listening", file=out, flush=True)
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select(list(socks), [], [], left)
            for sock in ready:
                data, peer = sock.recvfrom(65535)
                payload = data.decode(errors="replace")
                print(json.dumps({"src": peer[0], "sport": peer[1], "port": socks[sock], "payload": payload}),
                      file=out, flush=True)
                if until is not None and payload == until:
                    deadline = min(deadline, time.monotonic() + grace)
    finally:
        for sock in socks:
            sock.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.spoof", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    def common(p):
        p.add_argument("--dev", default="eth0")
        p.add_argument("--src-mac", help="Ethernet source (default: the interface's MAC)")
        p.add_argument("--count", type=int, default=1)

    p = verbs.add_parser("udp")
    p.add_argument("dst")
    p.add_argument("port", type=int)
    p.add_argument("--src", help="IP source (default: the pod's own)")
    p.add_argument("--sport", type=int, default=40000)
    p.add_argument("--dst-mac", help="Ethernet destination (default: the next hop's)")
    p.add_argument("--payload", default="spoofed")
    common(p)

    p = verbs.add_parser("arp-reply")
    p.add_argument("target", help="the IPv4 address told")
    p.add_argument("--claim", required=True, help="the IPv4 address claimed")
    p.add_argument("--target-mac")
    p.add_argument("--broadcast", action="store_true")
    common(p)

    p = verbs.add_parser("na")
    p.add_argument("--claim", required=True, help="the IPv6 address claimed (the NA's target)")
    p.add_argument("--dst", default="ff02::1")
    p.add_argument("--dst-mac")
    p.add_argument("--src", help="IPv6 source (default: the pod's link-local address)")
    p.add_argument("--link-mac", help="the target link-layer address option (default: --src-mac)")
    common(p)

    p = verbs.add_parser("send")
    p.add_argument("dst")
    p.add_argument("port", type=int)
    p.add_argument("--payload", default="legit")
    p.add_argument("--count", type=int, default=1)

    p = verbs.add_parser("neigh")
    p.add_argument("dst")
    p.add_argument("--dev")

    p = verbs.add_parser("listen")
    p.add_argument("address")
    p.add_argument("port", type=lambda text: [int(p) for p in text.split(",")])
    p.add_argument("seconds", type=float)
    p.add_argument("--until")
    p.add_argument("--grace", type=float, default=0.5)

    args = parser.parse_args(argv)
    if args.verb == "listen":
        listen(args.address, args.port, args.seconds, args.until, args.grace)
        return 0
    handler = {"udp": cmd_udp, "arp-reply": cmd_arp_reply, "na": cmd_na, "send": cmd_send,
               "neigh": cmd_neigh}[args.verb]
    try:
        print(json.dumps(handler(args)), flush=True)
    except LookupError as exc:
        print(f"spoof: {exc.args[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
