"""Running another CNI plugin (the IPAM delegate) as the spec describes.

The plugin is looked up by name in CNI_PATH, gets the full network configuration
on stdin and our CNI_* environment with CNI_COMMAND set to the operation.
"""

import json
import os

from ..cni.errors import DELEGATE_FAILED, INVALID_NETCONF, CniError
from ..cni import result as cni_result
from ..cni.plugins import is_plain_name, locate

DELEGATE_TIMEOUT = 60  # seconds; a runtime gives up long before this
IN_PROCESS = "weft-ipam"  # found on CNI_PATH as usual, then run without an exec


def find_plugin(plugin_type: str, path: list) -> str:
    if not is_plain_name(plugin_type):
        raise CniError(INVALID_NETCONF, f"plugin type {plugin_type!r} must be a plain name, not a path")
    found = locate(plugin_type, path)
    if found:
        return found
    raise CniError(
        INVALID_NETCONF,
        f"IPAM plugin {plugin_type!r} not found in CNI_PATH ({':'.join(path) or 'empty'}); "
        f"install it there or fix ipam.type",
    )


def run(plugin_type: str, command: str, env, conf: dict):
    """Run the delegate; returns its normalized result for ADD, None otherwise."""
    executable = find_plugin(plugin_type, env.path)
    if os.path.basename(executable) == IN_PROCESS:
        return _run_in_process(executable, command, env, conf)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    environ.update(env.as_environ())
    environ["CNI_COMMAND"] = command
    import subprocess  # only for a delegate that is not weft's own (~2 ms of import)

    try:
        proc = subprocess.run(
            [executable],
            input=json.dumps(conf).encode(),
            capture_output=True,
            env=environ,
            timeout=DELEGATE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise CniError(DELEGATE_FAILED, f"IPAM plugin {executable} did not answer {command} "
                       f"within {DELEGATE_TIMEOUT}s")
    except OSError as exc:
        raise CniError(DELEGATE_FAILED, f"IPAM plugin {executable} could not be run: {exc}")
    return _interpret(executable, command, proc.returncode, proc.stdout, proc.stderr)


def _run_in_process(executable: str, command: str, env, conf: dict):
    """weft-ipam is weft's own: dispatch to its handlers here (same code, same file lock
    as the executable) instead of paying for an exec and an interpreter start."""
    from ..cni.dispatch import dispatch
    from ..ipam.handlers import HANDLERS

    environ = {**env.as_environ(), "CNI_COMMAND": command}
    out, code = dispatch(HANDLERS, environ, json.dumps(conf).encode())
    return _interpret(executable, command, code, out, b"")


def _interpret(executable: str, command: str, returncode: int, stdout: bytes, stderr: bytes):
    stdout = stdout.strip()
    if returncode != 0:
        try:
            err = json.loads(stdout)
            code, msg = int(err["code"]), str(err["msg"])
        except (ValueError, KeyError, TypeError):
            stderr = stderr.decode(errors="replace").strip()[-500:]
            raise CniError(DELEGATE_FAILED, f"IPAM plugin {executable} failed {command} with exit "
                           f"code {returncode}", stderr or stdout.decode(errors="replace")[-500:])
        raise CniError(code, msg, str(err.get("details", "")))
    if command != "ADD":
        return None
    try:
        return cni_result.normalize(json.loads(stdout))
    except ValueError as exc:
        raise CniError(DELEGATE_FAILED, f"IPAM plugin {executable} returned a result that is not "
                       f"JSON: {exc}")
