"""weft-ipam: host-local compatible address management (stdlib only, no kernel access).

config.py     the ipam section: ranges, routes, dataDir, resolvConf
allocator.py  round-robin choice of free addresses (pure logic)
store.py      dataDir/<network>/ files, per-attachment index, flock
history.py    allocation history log and whois()
handlers.py   ADD/DEL/CHECK/GC/STATUS for cni.dispatch
"""
