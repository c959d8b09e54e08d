"""Per-node subnet leases and the subnet file that hands them to the plugin."""
