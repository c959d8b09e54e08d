"""weftd, the node agent: placeholder until the agent lands (issue: weftd leases)."""

import sys

USAGE = """usage: weftd [--etcd-endpoints URLS] [--network NAME] ...

weftd holds this node's subnet lease in etcd and programs the overlay.
It is not implemented in this release: write the subnet file
/run/weft/<network>.env yourself or give the netconf explicit ipam.ranges.
"""


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        sys.exit(0)
    sys.stderr.write(USAGE)
    sys.exit(2)
