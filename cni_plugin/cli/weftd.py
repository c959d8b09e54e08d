"""Entry point of the weftd node agent (see cni_plugin/agent)."""

import sys


def main() -> None:
    from ..agent.main import main as agent_main

    sys.exit(agent_main())
