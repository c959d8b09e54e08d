"""Where weft keeps things on a node: every default path and address, defined once.

Plain constants.  Each is a default only: weftd takes a flag for every path, the
plugin a netconf key.  The agent socket's default is the protocol's (cni/wire.py, the
one module the forwarder imports on every CNI call).
"""

from .cni.wire import DEFAULT_SOCKET as AGENT_SOCKET

RUN_DIR, _, AGENT_SOCKET_NAME = AGENT_SOCKET.rpartition("/")  # subnet files, status files, the socket
STATE_DIR = "/var/lib/weft"           # weftd: recorded subnets, VTEP MACs, history offsets
FLOW_LOG_DIR = "/var/log/weft/flows"    # weftd --flow-log-dir: <network>.jsonl flow records (docs/flows.md)
PLUGIN_DATA_DIR = "/var/lib/weft/cni"  # weft: its own locks
IPAM_DATA_DIR = "/var/lib/cni/networks"  # weft-ipam: host-local's default
LOG_FILE = "/var/log/weft/weft.log"
ETCD_ENDPOINTS = "http://127.0.0.1:2379"
ETCD_PREFIX = "/weft"
METRICS_ADDR = "127.0.0.1:9465"


def agent_socket(run_dir: str) -> str:
    return f"{run_dir}/{AGENT_SOCKET_NAME}"


def subnet_file(run_dir: str, network: str) -> str:
    return f"{run_dir}/{network}.env"


def status_file(run_dir: str, network: str) -> str:
    return f"{run_dir}/{network}.status.json"

