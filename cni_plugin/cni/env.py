"""The CNI_* environment: which variables each command needs, and their checks."""

import re

from .errors import INVALID_ENV, CniError

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}

# libcni's ValidateContainerID character set; the length bound keeps every file name
# derived from it (ipam by-attachment/<id>:<ifname> and its atomic-write temp name)
# inside NAME_MAX (255 bytes).  Runtimes use 64 hex digits.
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
CONTAINER_ID_MAX = 200
IFNAME_MAX = 15  # IFNAMSIZ - 1, in bytes


class CniEnv:
    """The validated CNI_* variables of one invocation."""

    def __init__(self, command, container_id, netns, ifname, args, path):
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args  # dict from CNI_ARGS
        self.path = path  # list of directories from CNI_PATH

    def as_environ(self) -> dict:
        """The variables to hand to a delegated plugin."""
        out = {"CNI_COMMAND": self.command, "CNI_PATH": ":".join(self.path)}
        if self.container_id:
            out["CNI_CONTAINERID"] = self.container_id
        if self.netns:
            out["CNI_NETNS"] = self.netns
        if self.ifname:
            out["CNI_IFNAME"] = self.ifname
        if self.args:
            out["CNI_ARGS"] = ";".join(f"{k}={v}" for k, v in self.args.items())
        return out


def command_of(environ: dict) -> str:
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENV, "required environment variable CNI_COMMAND is not set")
    if command not in COMMANDS:
        raise CniError(
            INVALID_ENV,
            f"unknown CNI_COMMAND {command!r}; expected one of {', '.join(COMMANDS)}",
        )
    return command


def validate_ifname(ifname: str) -> None:
    """Linux's own rules for an interface name (dev_valid_name) plus ':' (libcni's
    ValidateInterfaceName) and no control characters (they would reach log lines).
    Other characters (quotes, '#', braces) are legal: every consumer passes the name as
    data (netlink attributes, JSON, digests), never inside command or rule text."""
    problem = None
    if not ifname:
        problem = "is empty"
    elif len(ifname.encode(errors="surrogateescape")) > IFNAME_MAX:
        problem = f"is {len(ifname.encode(errors='surrogateescape'))} bytes long; the limit is {IFNAME_MAX}"
    elif ifname in (".", ".."):
        problem = "may not be '.' or '..'"
    elif any(c == "/" or c == ":" or c.isspace() for c in ifname):
        problem = "may not contain '/', ':' or whitespace"
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in ifname):
        problem = "may not contain control characters"
    if problem:
        raise CniError(INVALID_ENV, f"CNI_IFNAME {ifname!r} {problem}")


def validate_container_id(container_id: str) -> None:
    if not _CONTAINER_ID.fullmatch(container_id):  # fullmatch: "$" admits a trailing "\n"
        raise CniError(
            INVALID_ENV,
            f"CNI_CONTAINERID {container_id!r} must start with a letter or digit and "
            "contain only letters, digits, '_', '.' and '-'",
        )
    if len(container_id) > CONTAINER_ID_MAX:
        raise CniError(INVALID_ENV, f"CNI_CONTAINERID is {len(container_id)} characters long; "
                       f"the limit is {CONTAINER_ID_MAX}")


def parse_cni_args(raw: str) -> dict:
    args = {}
    for item in filter(None, raw.split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS item {item!r} is not KEY=VALUE")
        args[key] = value
    return args


def parse(environ: dict) -> CniEnv:
    command = command_of(environ)
    missing = [name for name in REQUIRED[command] if not environ.get(name)]
    if missing:
        raise CniError(
            INVALID_ENV,
            f"required environment variables not set for {command}: {', '.join(missing)}",
        )
    container_id = environ.get("CNI_CONTAINERID", "")
    if container_id:
        validate_container_id(container_id)
    ifname = environ.get("CNI_IFNAME", "")
    if "CNI_IFNAME" in REQUIRED[command] or ifname:
        validate_ifname(ifname)
    return CniEnv(
        command=command,
        container_id=container_id,
        netns=environ.get("CNI_NETNS", ""),
        ifname=ifname,
        args=parse_cni_args(environ.get("CNI_ARGS", "")),
        path=[p for p in environ.get("CNI_PATH", "").split(":") if p],
    )
