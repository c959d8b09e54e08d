"""weft, the main plugin: its commands, its network configuration, IPAM delegation.

commands.py  ADD/DEL/CHECK/GC/STATUS for cni.dispatch (rollback on a failed ADD)
config.py    weft's netconf keys, defaults, the subnet-file fill-in
delegate.py  running the IPAM plugin (weft-ipam in-process, anything else as an exec)
errors.py    datapath errors -> CNI error codes (the only place the two meet)
"""
