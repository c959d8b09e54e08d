"""weftctl install-conflist SRC DEST: put a conflist where the runtime reads it, with the
cniVersion the node's plugins and its container runtime support (cni/chain_version.py
decides; node_runtime.py learns the runtime, from the Node object or as stated).

What the DaemonSet's init container (conf/image/weft-install) runs; usable by hand on a
node installed with `make install`.  DEST is replaced by rename, and only when its content
changes, so a runtime reading it meanwhile sees the old or the new file, never half.
"""

import json
import os
import sys

from .. import fsutil, kube_api
from ..cni import chain_version
from . import node_runtime

VERSION_ENV = "WEFT_CNI_VERSION"
AUTO = "auto"
DEFAULT_BIN_DIR = "/opt/cni/bin"
PREFIX = "weftctl install-conflist"
EXIT_USAGE, EXIT_FAILED = 2, 3  # weftctl's


def add_parser(commands):
    parser = commands.add_parser(
        "install-conflist", help="write a conflist with the cniVersion the node's plugins support")
    parser.add_argument("source", metavar="SRC", help="the conflist to install (its cniVersion is replaced)")
    parser.add_argument("dest", metavar="DEST", help="where the runtime reads it, e.g. /etc/cni/net.d/10-weft.conflist")
    parser.add_argument("--cni-bin-dir", action="append", default=[], metavar="DIR",
                        help=f"where the runtime finds plugins (repeatable; default {DEFAULT_BIN_DIR})")
    parser.add_argument("--cni-version", metavar="VERSION",
                        help=f"'{AUTO}' ({chain_version.PREFERRED} when every plugin supports it and the runtime "
                             f"is known to take it, else {chain_version.FALLBACK}) or a version to write whatever "
                             f"they say (default: ${VERSION_ENV}, else {AUTO})")
    parser.add_argument("--runtime", metavar="NAME://VERSION",
                        help=f"the node's container runtime, e.g. containerd://2.1.9, instead of reading it from "
                             f"the Node object (default: ${node_runtime.RUNTIME_ENV})")
    parser.add_argument("--node-name", metavar="NAME",
                        help=f"the Node whose status names the runtime (default: ${node_runtime.NODE_NAME_ENV})")
    parser.add_argument(kube_api.SERVER_FLAG, metavar="URL",
                        help="the Kubernetes API (default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
    parser.add_argument("--kube-serviceaccount-dir", default=kube_api.SERVICEACCOUNT_DIR, metavar="DIR",
                        help="the ServiceAccount's token and ca.crt for reading the Node")
    return parser


def _say(msg: str, stream=None) -> None:
    print(f"{PREFIX}: {msg}", file=stream or sys.stdout, flush=True)


def _forced(args) -> tuple:
    """(forced version or "", what forced it); ValueError for an unknown version."""
    if args.cni_version is not None:
        value, source = args.cni_version, "--cni-version"
    else:
        value, source = os.environ.get(VERSION_ENV, ""), VERSION_ENV
    if value in ("", AUTO):
        return "", ""
    return chain_version.check_forced(value, source), source


def _load(path: str) -> dict:
    with open(path, "rb") as handle:
        conflist = json.loads(handle.read())
    if not isinstance(conflist, dict) or not isinstance(conflist.get("plugins"), list) or not conflist["plugins"]:
        raise ValueError("it is not a conflist (a JSON object with a non-empty plugins list)")
    return conflist


def run(args) -> int:
    try:
        forced, forced_by = _forced(args)
        node_runtime.stated(args.runtime)
    except ValueError as exc:
        _say(str(exc), sys.stderr)
        return EXIT_USAGE
    try:
        conflist = _load(args.source)
    except OSError as exc:
        _say(f"cannot read {args.source}: {exc.strerror}", sys.stderr)
        return EXIT_USAGE
    except (ValueError, RecursionError) as exc:
        _say(f"{args.source} refused: {exc}", sys.stderr)
        return EXIT_USAGE
    bin_dirs = args.cni_bin_dir or [DEFAULT_BIN_DIR]
    answers = [chain_version.ask(name, bin_dirs) for name in chain_version.chain_plugins(conflist)]
    runtime = None if forced else node_runtime.learn(args.runtime, args.node_name, args.kube_api_server,
                                                     args.kube_serviceaccount_dir)
    choice = chain_version.choose(answers, runtime, forced, forced_by)
    _say(f"cniVersion {choice.version} for {args.dest}: {choice.reason}")
    if runtime is not None and not runtime.known and all(chain_version.PREFERRED in a.supported for a in answers):
        # only the unknown runtime holds the chain back: say how to tell the installer
        _say(f"note: on a runtime that takes {chain_version.PREFERRED} (containerd 2.0 or later, CRI-O 1.31 or "
             f"later) state it with ${node_runtime.RUNTIME_ENV} or --runtime NAME://VERSION, or force the "
             f"version with {VERSION_ENV}={chain_version.PREFERRED}")
    text = json.dumps({**conflist, "cniVersion": choice.version}, indent=2) + "\n"
    try:
        with open(args.dest) as handle:
            if handle.read() == text:
                _say(f"{args.dest} unchanged")
                return 0
    except (OSError, UnicodeDecodeError):
        pass
    try:
        fsutil.write_atomic(args.dest, text, mode=0o644)
    except OSError as exc:
        _say(f"cannot write {args.dest}: {exc.strerror}", sys.stderr)
        return EXIT_FAILED
    _say(f"wrote {args.dest}")
    return 0
