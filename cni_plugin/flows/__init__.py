"""Flow records (docs/flows.md): which workloads talked, when, how much, which policy
decided.  Pure logic and files (stdlib only): the FlowLog config key, the conntrack
mark layout, record building, name attribution over the allocation history, the
journal writer with its bounds, the reader weftctl merges, and the IPFIX encoder.
The kernel side is datapath/conntrack.py; the agent side agent/controllers/flows.py.
"""
