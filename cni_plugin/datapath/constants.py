"""Netlink numbers weft uses, defined once for both netlink clients (stdlib only)."""

AF_INET, AF_INET6, AF_BRIDGE = 2, 10, 7
FAMILY = {4: AF_INET, 6: AF_INET6}
LOOPBACK_INDEX = 1  # in every network namespace
IFF_UP = 0x1
IFA_F_NODAD = 0x02
IFA_F_TEMPORARY = 0x01
IFA_F_DADFAILED = 0x08
IFA_F_DEPRECATED = 0x20
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTPROT_STATIC = 4
WEFT_RTPROT = 0x77  # 119: unassigned in rtnetlink.h and /etc/iproute2/rt_protos
RTNH_F_ONLINK = 0x04
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
CLONE_NEWNET = 0x40000000
