"""Run one CNI invocation: parse env and stdin, call the handler, encode the outcome.

Handlers take (CniEnv, conf dict) and return a result dict (ADD), or None.  This
module turns every failure into CNI error JSON on stdout and a non-zero exit code,
so the same code runs in-process (tests, the agent) and behind an executable.
"""

import json
import sys

from .errors import INTERNAL, IO_FAILURE, CniError
from . import env as cni_env
from . import netconf, versions
from .result import render


def _encode(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _version_reply(stdin: bytes) -> bytes:
    version = versions.LATEST
    if stdin.strip():
        conf = netconf.decode(stdin)
        if "cniVersion" in conf:
            version = netconf.check_version(conf)
    return _encode({"cniVersion": version, "supportedVersions": list(versions.SUPPORTED)})


def dispatch(handlers: dict, environ: dict, stdin: bytes) -> tuple[bytes, int]:
    """handlers: {"ADD": fn, "DEL": fn, ...}; each fn(CniEnv, conf) -> result or None."""
    reply_version = versions.LATEST
    try:
        command = cni_env.command_of(environ)
        if command == "VERSION":
            return _version_reply(stdin), 0
        conf = netconf.decode(stdin)
        reply_version = netconf.check_version(conf)
        netconf.check_command_version(command, reply_version)
        env = cni_env.parse(environ)
        netconf.check_name(conf)
        netconf.check_type(conf)
        result = handlers[command](env, conf)
        if command == "ADD":
            return _encode(render(result, reply_version)), 0
        return b"", 0
    except CniError as err:
        return _encode(err.to_dict(reply_version)), 1
    except OSError as exc:  # a file or socket the handler did not expect to fail: still I/O
        import traceback  # only on the way out of a failure (~3 ms of every call otherwise)

        err = CniError(IO_FAILURE, f"I/O failure: {exc}", traceback.format_exc(limit=8))
        return _encode(err.to_dict(reply_version)), 1
    except Exception as exc:  # a bug: still answer in the protocol
        import traceback

        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        err = CniError(INTERNAL, f"internal error: {detail}", traceback.format_exc(limit=8))
        return _encode(err.to_dict(reply_version)), 1


def main(handlers: dict, environ=None) -> None:
    """Executable entry point: stdin/stdout/exit code around dispatch()."""
    import os

    environ = os.environ if environ is None else environ
    stdin = sys.stdin.buffer.read()
    out, code = dispatch(handlers, environ, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    sys.exit(code)
