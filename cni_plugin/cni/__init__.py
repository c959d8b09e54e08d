"""The CNI protocol layer: stdlib only, no kernel access.

errors.py      error codes and CniError (the only place codes are defined)
env.py         CNI_* variables: presence per command and validation
netconf.py     parsing stdin and the checks shared by weft and weft-ipam
result.py      result types and conversion between spec versions
versions.py    spec versions and the commands each introduced
dispatch.py    (handlers, env, stdin) -> (stdout bytes, exit code)
invocation.py  one call with weft's log line (executable and agent alike)
log.py         the plugin's per-call log line
wire.py        both halves of the weft <-> weftd socket protocol
"""
