"""The node's NetworkPolicy table by name: what a standalone ADD asks of it
(plugin/commands.py) without importing the compiler and its records."""

FAMILY = "inet"


def table_name(network: str) -> str:
    return "weft_policy_" + "".join(c if c.isalnum() or c == "_" else "_" for c in network)
