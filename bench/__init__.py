"""weft's benchmark (`make bench`): weft against the reference Go plugins, side by side.

    python -m bench.run [--attachments N] [--smoke] [--out DIR] [--only FIGURE,...]

Every figure runs inside network namespaces made for the run (random suffixes) and
removed at the end, even on failure or Ctrl-C; processes are stopped by PID.
Modules: run (main, JSON, table), context (run-wide state, stats, cleanup),
contenders (the three CNI contenders), attach (sequential / parallel / scale
figures), throughput (iperf3 against hand-built topologies), source_validation
(issue 22: TCP connections/s and iperf3 with validation on vs `allowSpoofing`, via
conn_rate's loop), convergence (a
20-node cluster: lease -> datapath on every node, agent RSS), report (targets, tables),
doc_tables (each figure's table written into its block of docs/).
"""
