"""Parsing a network configuration from stdin: the checks every weft binary shares.

Plugin-specific keys and their defaults live with their owner
(cni_plugin/plugin/config.py for weft, cni_plugin/ipam/config.py for weft-ipam).
"""

import json
import re

from ..checks import is_a
from .errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_NETCONF, CniError
from . import versions

_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def decode(stdin: bytes) -> dict:
    try:
        conf = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, f"network configuration on stdin is not valid JSON: {exc}")
    except RecursionError:
        raise CniError(DECODE_FAILURE, "network configuration on stdin is nested too deeply to decode")
    if not isinstance(conf, dict):
        raise CniError(DECODE_FAILURE, "network configuration on stdin must be a JSON object")
    return conf


def check_version(conf: dict) -> str:
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_NETCONF, "network configuration has no cniVersion")
    if version not in versions.SUPPORTED:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"cniVersion {version!r} is not supported; weft supports {', '.join(versions.SUPPORTED)}",
        )
    return version


def check_name(conf: dict) -> str:
    name = conf.get("name")
    if not isinstance(name, str) or not _NETWORK_NAME.fullmatch(name):
        raise CniError(
            INVALID_NETCONF,
            f"network name {name!r} is invalid: it must start with a letter or digit and "
            "contain only letters, digits, '_', '.' and '-'",
        )
    return name


def check_type(conf: dict) -> str:
    """The spec's required `type`: a plugin name, as runtimes find it on CNI_PATH."""
    kind = conf.get("type")
    if not isinstance(kind, str) or not kind:
        got = "is missing" if kind is None else f"must be a non-empty string, got {json.dumps(kind)}"
        raise CniError(INVALID_NETCONF, f"network configuration key type {got}; name the plugin, e.g. \"weft\"")
    if "/" in kind or kind in (".", ".."):
        raise CniError(INVALID_NETCONF, f"type {kind!r} must be a plugin name, not a path")
    return kind


def check_command_version(command: str, version: str) -> None:
    since = versions.COMMAND_SINCE[command]
    if not versions.at_least(version, since):
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"{command} needs cniVersion {since} or later; the configuration says {version}",
        )


def typed(section: dict, key: str, kind, where: str, default=None):
    """section[key] if present and of `kind`, else default; a wrong type is error 7."""
    value = section.get(key, default)
    if value is default:
        return value
    if not is_a(value, kind):
        names = {bool: "a boolean", int: "an integer", str: "a string", dict: "an object", list: "a list",
                 (int, float): "a number"}
        want = names.get(kind, getattr(kind, "__name__", str(kind)))
        raise CniError(INVALID_NETCONF, f"{where}{key} must be {want}, got {json.dumps(value)}")
    return value


def runtime_config(conf: dict) -> dict:
    rc = conf.get("runtimeConfig") or {}
    return rc if isinstance(rc, dict) else {}


def cni_args(conf: dict) -> dict:
    """The `args.cni` object of the convention for passing arguments in netconf."""
    args = conf.get("args") or {}
    cni = args.get("cni") if isinstance(args, dict) else None
    return cni if isinstance(cni, dict) else {}


VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"


def valid_attachments(conf: dict) -> set:
    """GC's {(containerID, ifname)} from cni.dev/valid-attachments; error 7 naming the item."""
    raw = conf.get(VALID_ATTACHMENTS_KEY)
    if not isinstance(raw, list):
        got = "is missing" if raw is None else f"must be a list, got {json.dumps(raw)}"
        raise CniError(INVALID_NETCONF, f"GC: {VALID_ATTACHMENTS_KEY} {got}")
    valid = set()
    for i, item in enumerate(raw):
        where = f"{VALID_ATTACHMENTS_KEY}[{i}]"
        if not isinstance(item, dict):
            raise CniError(INVALID_NETCONF, f"{where} must be an object, got {json.dumps(item)}")
        container_id = typed(item, "containerID", str, f"{where}.", "")
        ifname = typed(item, "ifname", str, f"{where}.", "")
        if not container_id or not ifname:
            raise CniError(INVALID_NETCONF, f"{where} needs both containerID and ifname")
        valid.add((container_id, ifname))
    return valid
