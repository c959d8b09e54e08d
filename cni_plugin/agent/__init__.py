"""weftd, the node agent: subnet leases in etcd, the overlay datapath, metrics."""
