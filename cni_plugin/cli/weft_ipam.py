"""Entry point of the `weft-ipam` CNI plugin: forwards to weftd or runs standalone."""

import sys


def main() -> None:
    from ..forwarder import main as forward

    sys.exit(forward("weft-ipam"))
