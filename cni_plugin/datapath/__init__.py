"""Kernel state only: the one package that imports pyroute2 or speaks raw netlink.

nlcodec.py    the one netlink codec: header, attribute layout, message numbers,
              encoders and decoders (stdlib only; fuzz-tested)
rtnl.py       synchronous rtnetlink client for the per-pod path (links, addresses,
              routes) over nlcodec; never imports pyroute2
netlink.py    the agent's netlink client (devices, single writes) over pyroute2's
              IPRoute; its reads of weft's entries go to owned_dump.py
owned_dump.py the reconcile's one reader (kernel-filtered dumps); batch.py many
              writes per send; changes.py change notifications (all over nlcodec)
conntrack.py  the kernel's connection tracking over nlcodec: flow-record events and dumps,
              and the flush of a released pod address's entries
constants.py  netlink numbers shared by both clients, defined once
errors.py     DatapathError and its family (no CNI codes here)
netns.py      opening namespaces safely, without blocking
links.py      bridge and veth links; container.py the pod side of an attachment
vxlan_device.py  a VXLAN device with exactly the wanted settings
underlay.py   the node's underlay interface and address
sysctl.py     per-interface and forwarding knobs
nft.py        the one nftables module (libnftables' JSON API in-process, ctypes);
              masq.py the node-wide masquerade table over it
naming.py     names of the links weft creates; mac.py random unicast MACs

Sockets are bound to a namespace when opened; the process never switches its own.
"""
