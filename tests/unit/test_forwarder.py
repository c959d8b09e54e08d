"""The forwarder's stdlib-only pieces (no agent needed)."""

import json
import os
import subprocess
import sys

import pytest

from cni_plugin import forwarder
from cni_plugin.cni import wire


@pytest.mark.parametrize("conf,expected", [
    ({"cniVersion": "1.0.0"}, forwarder.DEFAULT_SOCKET),
    ({"agentSocket": "/run/x/weftd.sock"}, "/run/x/weftd.sock"),
    ({"agentSocket": ""}, forwarder.DEFAULT_SOCKET),
    ({"agentSocket": '/tmp/we"ird'}, '/tmp/we"ird'),
    ({"agentSocket": "/tmp/back\\slash"}, "/tmp/back\\slash"),
    ({"agentSocket": 7}, forwarder.DEFAULT_SOCKET),
])
def test_socket_path(conf, expected):
    assert forwarder.socket_path(json.dumps(conf).encode()) == expected
    assert forwarder.socket_path(json.dumps(conf, indent=4).encode()) == expected


def test_request_carries_only_cni_variables():
    request = wire.encode_request("weft", {"CNI_COMMAND": "ADD", "HOME": "/root"}, b"{}")
    assert request.startswith(b"WEFT1 weft\n") and b"CNI_COMMAND=ADD\0" in request and b"HOME" not in request


def test_error_json_answers_in_the_callers_version():
    out = forwarder._cni_error(11, 'weftd "x" timed out', b'{"cniVersion": "0.4.0", "name": "n"}')
    assert json.loads(out) == {"cniVersion": "0.4.0", "code": 11, "msg": 'weftd "x" timed out'}


def test_forwarder_imports_no_heavy_modules(tmp_path):
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"cniVersion": "1.0.0", "agentSocket": "/run/x.sock"}))
    code = ("import sys; from cni_plugin import forwarder; "
            "forwarder.socket_path(open(sys.argv[1], 'rb').read()); "
            "print(sorted(m for m in ('os', 'json', 're', 'enum', 'socket', 'pyroute2', 'asyncio') if m in sys.modules))")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-IS", "-c", f"import sys; sys.path.insert(0, {repo!r}); {code}", str(conf)],
                         capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_standalone_handlers_run_without_the_cyclic_collector():
    """A standalone call exits when done: the handlers (and the imports behind them)
    run with the garbage collector off, in the executable's own process only."""
    code = ("import gc, sys; from cni_plugin import forwarder, roles; "
            "roles.invoke = lambda role, environ, stdin: (repr(gc.isenabled()).encode(), 0); "
            "before = gc.isenabled(); out, _ = forwarder.standalone('weft', b'{}'); "
            "print(before, out.decode())")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-IS", "-c", f"import sys; sys.path.insert(0, {repo!r}); {code}"],
                         capture_output=True, text=True)
    assert out.stdout.split() == ["True", "False"], out.stderr
