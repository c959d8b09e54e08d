"""Inject a frame into a VXLAN overlay from inside a pod (stdlib only), for the
control-plane guard's tests.

    python -m lab.vxlan_inject NODE_IP PORT VNI VTEP_MAC SRC DST DPORT PAYLOAD

sends one ordinary UDP datagram (through the pod's own stack, so its node
masquerades it) to NODE_IP:PORT whose payload is a VXLAN header (VNI) and a whole
Ethernet frame: to VTEP_MAC (the receiving node's VXLAN device), carrying an IPv4/UDP
datagram SRC -> DST:DPORT with PAYLOAD.  SRC is whatever the caller claims: the
point is that the inner source is never checked against the pod that sent it.
The inner headers come from lab/spoof.py's builders; the VXLAN header (RFC 7348
section 5: flags with the I bit, 24 reserved bits, the VNI, 8 reserved bits) is
the only layout written here.  Prints one JSON line saying what was sent.
"""

import json
import socket
import struct
import sys

from lab import spoof

VXLAN_FLAG_VNI = 0x08


def vxlan_header(vni: int) -> bytes:
    return struct.pack("!B3xI", VXLAN_FLAG_VNI, vni << 8)


def inner_frame(vtep_mac: str, src: str, dst: str, dport: int, payload: bytes) -> bytes:
    return spoof.udp_frame("02:00:de:ad:be:ef", vtep_mac, src, dst, 40001, dport, payload)


def main(argv) -> int:
    node_ip, port, vni, vtep_mac, src, dst, dport, payload = argv
    packet = vxlan_header(int(vni)) + inner_frame(vtep_mac, src, dst, int(dport), payload.encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(packet, (node_ip, int(port)))
    print(json.dumps({"sent": "vxlan", "to": f"{node_ip}:{port}", "vni": int(vni), "innerSrc": src,
                      "innerDst": f"{dst}:{dport}", "bytes": len(packet)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
