"""The CNI protocol layer: stdlib only, no kernel access.

env.py      CNI_* variables: presence per command and validation
netconf.py  parsing stdin and the checks shared by weft and weft-ipam
result.py   result types and conversion between spec versions
dispatch.py (handlers, env, stdin) -> (stdout bytes, exit code)
"""
