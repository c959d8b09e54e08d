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

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
IFNAME_MAX = 15  # IFNAMSIZ - 1


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
    """Linux's own rules for an interface name (dev_valid_name) plus ':'."""
    problem = None
    if not ifname:
        problem = "is empty"
    elif len(ifname) > IFNAME_MAX:
        problem = f"is {len(ifname)} characters long; the limit is {IFNAME_MAX}"
    elif ifname in (".", ".."):
        problem = "may not be '.' or '..'"
    elif any(c == "/" or c == ":" or c.isspace() for c in ifname):
        problem = "may not contain '/', ':' or whitespace"
    if problem:
        raise CniError(INVALID_ENV, f"CNI_IFNAME {ifname!r} {problem}")


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
    if container_id and not _CONTAINER_ID.match(container_id):
        raise CniError(
            INVALID_ENV,
            f"CNI_CONTAINERID {container_id!r} must start with a letter or digit and "
            "contain only letters, digits, '_', '.' and '-'",
        )
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
