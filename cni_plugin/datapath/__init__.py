"""Kernel state: the only package that imports pyroute2.

Sockets are bound to a namespace when opened (IPRoute(netns=path, flags=0)); the
process never switches its own namespace.
"""
