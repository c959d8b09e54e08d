"""weft demos (run as root through `make demo`)."""
