"""Generate weft's etcd gRPC stubs from cni_plugin/subnet/etcd_api/etcd.proto.

    python scripts/etcd_stubs.py            # rewrite the committed modules (make stubs)
    python scripts/etcd_stubs.py --into DIR # write them under DIR instead (the staleness test)

Needs grpcio-tools (the test extra pins the version the committed modules came from, so
regenerating with it gives the same bytes).  The modules are committed, so installing
weft needs neither grpcio-tools nor protoc.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO = "cni_plugin/subnet/etcd_api/etcd.proto"
# what protoc writes for PROTO, relative to the output root
OUTPUTS = ("cni_plugin/subnet/etcd_api/etcd_pb2.py", "cni_plugin/subnet/etcd_api/etcd_pb2.pyi",
           "cni_plugin/subnet/etcd_api/etcd_pb2_grpc.py")


def generate(into: str = ROOT) -> list:
    """Run protoc (grpcio-tools' copy) on PROTO with output under `into`; the paths written."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise SystemExit("etcd_stubs: grpcio-tools is not installed; "
                         "run `pip install -e '.[test]'` (or make venv) first") from None
    os.makedirs(os.path.join(into, os.path.dirname(PROTO)), exist_ok=True)
    # the proto path is the repository root, so the generated stub imports its messages
    # as cni_plugin.subnet.etcd_api.etcd_pb2, from inside the package
    status = protoc.main(["grpc_tools.protoc", f"-I{ROOT}", f"--python_out={into}", f"--pyi_out={into}",
                          f"--grpc_python_out={into}", os.path.join(ROOT, PROTO)])
    if status != 0:
        raise SystemExit(f"etcd_stubs: protoc failed on {PROTO} (exit {status}); see its message above")
    return [os.path.join(into, path) for path in OUTPUTS]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--into", default=ROOT, help="output root (default: this checkout)")
    args = parser.parse_args(argv)
    for path in generate(os.path.abspath(args.into)):
        print(os.path.relpath(path, args.into))
    return 0


if __name__ == "__main__":
    sys.exit(main())
