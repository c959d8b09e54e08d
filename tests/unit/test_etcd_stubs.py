"""etcd's API through generated stubs: the committed modules are what etcd.proto
generates, and they load under protobuf's C runtime in weftd's process (no etcd here:
tests/cluster/test_registry.py runs them against a real one)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import etcd_stubs  # noqa: E402


def test_the_committed_stubs_are_what_the_proto_generates(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is in the test extra: pip install -e '.[test]'")
    generated = etcd_stubs.generate(str(tmp_path))
    assert [os.path.relpath(path, tmp_path) for path in generated] == list(etcd_stubs.OUTPUTS)
    stale = [rel for rel, path in zip(etcd_stubs.OUTPUTS, generated)
             if open(path, "rb").read() != open(os.path.join(REPO, rel), "rb").read()]
    assert stale == [], f"{', '.join(stale)} do not match {etcd_stubs.PROTO}: run `make stubs` and commit them"


# Every module of the package imported into one interpreter that starts as weftd's
# launcher starts it (-I, no PROTOCOL_BUFFERS_* in the environment), then the runtime
# protobuf chose: importing any of them must not force the pure-Python one.
ALL_MODULES = r"""
import importlib, json, os, pkgutil, sys
import cni_plugin
names = sorted(m.name for m in pkgutil.walk_packages(cni_plugin.__path__, "cni_plugin."))
for name in names:
    importlib.import_module(name)
from cni_plugin.cli import weftd  # the entry point itself
from google.protobuf.internal import api_implementation
print(json.dumps({"runtime": api_implementation.Type(), "modules": len(names),
                  "forced": os.environ.get("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION")}))
"""


def test_weftds_process_parses_etcd_answers_with_the_c_runtime():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROTOCOL_BUFFERS")}
    out = subprocess.run([sys.executable, "-I", "-c", ALL_MODULES], cwd="/", env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import json
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["modules"] > 50
    assert result["forced"] is None
    assert result["runtime"] != "python", result


def test_the_stubs_speak_etcds_service_names():
    """Only the service and method names travel (as the HTTP/2 path): they are etcd's."""
    from cni_plugin.subnet.etcd_api import etcd_pb2 as pb

    methods = {f"/{service.full_name}/{method.name}"
               for service in pb.DESCRIPTOR.services_by_name.values() for method in service.methods}
    assert methods == {
        "/etcdserverpb.KV/Range", "/etcdserverpb.KV/Put", "/etcdserverpb.KV/DeleteRange", "/etcdserverpb.KV/Txn",
        "/etcdserverpb.Watch/Watch",
        "/etcdserverpb.Lease/LeaseGrant", "/etcdserverpb.Lease/LeaseRevoke", "/etcdserverpb.Lease/LeaseKeepAlive",
        "/etcdserverpb.Lease/LeaseTimeToLive",
        "/etcdserverpb.Auth/Authenticate", "/etcdserverpb.Maintenance/Status"}
    streams = {method.name for service in pb.DESCRIPTOR.services_by_name.values() for method in service.methods
               if method.client_streaming and method.server_streaming}
    assert streams == {"Watch", "LeaseKeepAlive"}
