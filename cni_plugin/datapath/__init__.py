"""Kernel state only: the one package that imports pyroute2.

rtnl.py       synchronous rtnetlink client for the per-pod path (links, addresses,
              routes) over pyroute2's message classes
netlink.py    the agent's netlink client (neighbours, FDB, routes, VXLAN devices)
              over pyroute2's IPRoute; same errors, same constants
constants.py  netlink numbers used by both, defined once
errors.py     DatapathError and its family (no CNI codes here)
netns.py      opening namespaces safely, without blocking
links.py      bridge and veth links; container.py the pod side of an attachment
vxlan_device.py  a VXLAN device with exactly the wanted settings
underlay.py   the node's underlay interface and address
sysctl.py     per-interface and forwarding knobs
nft.py        the one nftables module; masq.py the masquerade table over it
naming.py     names of the links weft creates; mac.py random unicast MACs

Sockets are bound to a namespace when opened; the process never switches its own.
"""
