"""weft: a CNI network plugin, IPAM delegate and node agent."""

__version__ = "0.1.0"
