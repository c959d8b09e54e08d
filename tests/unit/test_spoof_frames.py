"""lab/spoof.py's frame builders, parsed back with struct (no packet library).

Checksums are verified the receiver's way (the ones' complement sum over the header
and pseudo-header, checksum included, folds to 0xffff), with a sum written here, not
the module's, plus published test vectors for the module's checksum().
"""

import ipaddress
import struct

import pytest

from lab import spoof

POD_MAC, GW_MAC = "0a:58:0a:f4:01:05", "ee:ee:ee:00:00:01"


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo(src, dst, proto, length):
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + bytes([0, proto]) + length.to_bytes(2, "big")
    return s.packed + d.packed + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])


def split_ether(frame):
    dst, src, ethertype = struct.unpack("!6s6sH", frame[:14])
    return spoof.mac_text(dst), spoof.mac_text(src), ethertype, frame[14:]


@pytest.mark.parametrize("data, expected", [
    (bytes.fromhex("0001f203f4f5f6f7"), 0x220D),  # RFC 1071 section 3: sum ddf2
    (bytes.fromhex("450000730000400040110000c0a80001c0a800c7"), 0xB861),  # the classic IPv4 header
    (b"\x01", 0xFEFF),  # odd length: padded with a zero byte
])
def test_checksum_vectors(data, expected):
    assert spoof.checksum(data) == expected


def test_udp_over_ipv4_with_a_forged_source():
    frame = spoof.udp_frame(POD_MAC, GW_MAC, "10.244.1.2", "10.244.2.3", 40000, 5353, b"forged!")
    dst_mac, src_mac, ethertype, packet = split_ether(frame)
    assert (dst_mac, src_mac, ethertype) == (GW_MAC, POD_MAC, 0x0800)
    ver_ihl, tos, total, ident, frag, ttl, proto, _csum, src, dst = struct.unpack("!BBHHHBBH4s4s", packet[:20])
    assert ver_ihl == 0x45 and tos == 0 and frag == 0 and ttl == 64 and proto == 17
    assert total == len(packet) == 20 + 8 + 7
    assert ipaddress.IPv4Address(src) == ipaddress.IPv4Address("10.244.1.2")
    assert ipaddress.IPv4Address(dst) == ipaddress.IPv4Address("10.244.2.3")
    assert ones_sum(packet[:20]) == 0xFFFF  # header checksum
    segment = packet[20:]
    sport, dport, length, csum = struct.unpack("!HHHH", segment[:8])
    assert (sport, dport, length) == (40000, 5353, 15) and csum != 0
    assert segment[8:] == b"forged!"
    assert ones_sum(pseudo("10.244.1.2", "10.244.2.3", 17, length) + segment) == 0xFFFF


def test_udp_over_ipv6():
    src, dst = "fd10:244:1::5", "fd10:244:2::9"
    frame = spoof.udp_frame(POD_MAC, GW_MAC, src, dst, 1234, 80, b"six")
    _, _, ethertype, packet = split_ether(frame)
    assert ethertype == 0x86DD
    first, plen, nh, hops, s, d = struct.unpack("!IHBB16s16s", packet[:40])
    assert first >> 28 == 6 and first & 0x0FFFFFFF == 0
    assert (plen, nh, hops) == (len(packet) - 40, 17, 64)
    assert (ipaddress.IPv6Address(s), ipaddress.IPv6Address(d)) == (ipaddress.IPv6Address(src),
                                                                    ipaddress.IPv6Address(dst))
    segment = packet[40:]
    assert struct.unpack("!HHH", segment[:6]) == (1234, 80, 11) and segment[8:] == b"six"
    assert ones_sum(pseudo(src, dst, 17, plen) + segment) == 0xFFFF


def test_udp_checksum_zero_is_sent_as_all_ones():
    """RFC 768: a computed 0 goes on the wire as 0xffff (0 means 'no checksum').
    Search a payload whose sum makes the checksum 0, then check the substitution."""
    src, dst = "10.0.0.1", "10.0.0.2"
    for word in range(0x10000):
        payload = word.to_bytes(2, "big")
        raw = struct.pack("!HHHH", 1, 2, 10, 0) + payload
        if ones_sum(pseudo(src, dst, 17, 10) + raw) == 0xFFFF:
            break
    else:
        pytest.fail("no payload gives a zero UDP checksum")
    assert struct.unpack("!H", spoof.udp(src, dst, 1, 2, payload)[6:8]) == (0xFFFF,)


def test_arp_reply():
    frame = spoof.arp_reply_frame(POD_MAC, "0a:58:0a:f4:01:09", "10.244.1.7", "0a:58:0a:f4:01:09", "10.244.1.9")
    dst_mac, src_mac, ethertype, packet = split_ether(frame)
    assert (dst_mac, src_mac, ethertype) == ("0a:58:0a:f4:01:09", POD_MAC, 0x0806)
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = struct.unpack("!HHBBH6s4s6s4s", packet)
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 2)
    assert spoof.mac_text(sha) == POD_MAC and str(ipaddress.IPv4Address(spa)) == "10.244.1.7"
    assert spoof.mac_text(tha) == "0a:58:0a:f4:01:09" and str(ipaddress.IPv4Address(tpa)) == "10.244.1.9"


def test_unsolicited_neighbour_advertisement():
    src, dst, target = "fe80::858:aff:fef4:105", "ff02::1", "fd10:244:1::7"
    frame = spoof.na_frame(POD_MAC, spoof.multicast_mac(dst), src, dst, target, POD_MAC)
    dst_mac, src_mac, ethertype, packet = split_ether(frame)
    assert (dst_mac, src_mac, ethertype) == ("33:33:00:00:00:01", POD_MAC, 0x86DD)
    _, plen, nh, hops, s, d = struct.unpack("!IHBB16s16s", packet[:40])
    assert (nh, hops, plen) == (58, 255, 32)  # hop limit 255: RFC 4861 7.1.2
    assert ipaddress.IPv6Address(s) == ipaddress.IPv6Address(src)
    body = packet[40:]
    kind, code, _csum, flags, tgt = struct.unpack("!BBHI16s", body[:24])
    assert (kind, code) == (136, 0)
    assert flags >> 29 == 0b001  # Router 0, Solicited 0, Override 1
    assert ipaddress.IPv6Address(tgt) == ipaddress.IPv6Address(target)
    opt_type, opt_len, lladdr = struct.unpack("!BB6s", body[24:32])
    assert (opt_type, opt_len, spoof.mac_text(lladdr)) == (2, 1, POD_MAC)
    assert ones_sum(pseudo(src, dst, 58, plen) + body) == 0xFFFF


def test_multicast_mac_and_mac_parsing():
    assert spoof.multicast_mac("ff02::1:ff00:1234") == "33:33:ff:00:12:34"
    assert spoof.mac_bytes("0A-58-0A-F4-01-05") == bytes.fromhex("0a580af40105")
    with pytest.raises(ValueError):
        spoof.mac_bytes("0a:58:0a")


def test_listen_prints_one_line_per_datagram_and_stops_after_the_marker():
    import io
    import socket
    import threading

    out = io.StringIO()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # a free port for the listener (loopback only)
    thread = threading.Thread(target=spoof.listen, args=("127.0.0.1", port, 10.0, "end", 0.2, out))
    thread.start()
    try:
        for _ in range(100):
            if out.getvalue().startswith("listening"):
                break
            threading.Event().wait(0.02)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"one", ("127.0.0.1", port))
            sender.sendto(b"end", ("127.0.0.1", port))
    finally:
        thread.join(15)
    assert not thread.is_alive()
    import json
    lines = out.getvalue().splitlines()
    assert lines[0] == "listening"
    seen = [json.loads(line) for line in lines[1:]]
    assert [s["payload"] for s in seen] == ["one", "end"] and {s["src"] for s in seen} == {"127.0.0.1"}
