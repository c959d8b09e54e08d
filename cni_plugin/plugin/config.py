"""weft's network configuration: defaults, validation and the subnet-file fill-in.

Every key and default is listed in docs/configuration.md; keep the
two in step.
"""

import ipaddress
from collections import namedtuple

from .. import paths
from ..checks import is_mtu
from ..cni.errors import INVALID_NETCONF, NOT_AVAILABLE, TRY_AGAIN_LATER, CniError
from ..cni import invocation, netconf
from ..cni.env import validate_ifname
from ..guard import ports
from ..subnet import subnet_file

DEFAULT_BRIDGE = "cbr0"
DEFAULT_MTU = 1500
DEFAULT_DATA_DIR = paths.PLUGIN_DATA_DIR
DEFAULT_AGENT_SOCKET = paths.AGENT_SOCKET
DEFAULT_LOG_FILE = paths.LOG_FILE
DEFAULT_LOCK_TIMEOUT = 45.0  # seconds: below the forwarder's 60 s deadline


# A namedtuple, not a dataclass: `dataclasses` imports `inspect` (with ast, dis and
# tokenize), ~8 ms of every standalone call.  Fields: allow_spoofing: the network's pods
# may send from any address and MAC (routers, VPNs); delegate_conf: the netconf handed to
# the IPAM delegate (ranges filled from the subnet file); cluster_networks: destinations
# never masqueraded (the cluster network(s)), besides the pod subnet; ip_masq_families:
# the address families masqueraded when ip_masq (the subnet file's per-family overrides).
_FIELDS = ("name version bridge is_gateway is_default_gateway force_address mtu hairpin_mode ip_masq "
           "allow_spoofing subnet_file data_dir agent_socket log_file lock_timeout ipam_type delegate_conf "
           "cluster_networks ip_masq_families runtime_config prev_result raw")


class WeftConf(namedtuple("WeftConf", _FIELDS)):
    __slots__ = ()

    @property
    def ports_dir(self) -> str:
        """Where the network's port records live (guard/ports.py): beside the subnet file."""
        return ports.directory_beside(self.subnet_file, self.name)


def _ipam_section(conf: dict) -> dict:
    ipam = conf.get("ipam")
    if ipam is None:
        raise CniError(INVALID_NETCONF, "network configuration has no ipam section; weft needs one "
                       '(usually "ipam": {"type": "weft-ipam"})')
    if not isinstance(ipam, dict):
        raise CniError(INVALID_NETCONF, "ipam must be an object")
    ipam_type = ipam.get("type")
    if not isinstance(ipam_type, str) or not ipam_type:
        raise CniError(INVALID_NETCONF, "ipam.type is missing; name the IPAM plugin, e.g. weft-ipam")
    if "/" in ipam_type or "\\" in ipam_type or ipam_type in (".", ".."):
        raise CniError(INVALID_NETCONF, f"ipam.type {ipam_type!r} must be a plugin name on CNI_PATH, "
                       "not a path")
    return ipam


def _has_ranges(ipam: dict) -> bool:
    return bool(ipam.get("ranges")) or bool(ipam.get("subnet"))


def _read_subnet_file(path: str, command: str):
    try:
        return subnet_file.read(path)
    except FileNotFoundError:
        code = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER
        raise CniError(code, f"subnet file {path} does not exist: weftd has not leased a subnet for "
                       "this node yet; check that weftd is running (weftctl status)")
    except (OSError, subnet_file.SubnetFileError) as exc:
        code = NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER
        raise CniError(code, f"subnet file {path} is unusable: {exc}")


def _fill_from_lease(ipam: dict, lease) -> list:
    """ranges and routes from the node's lease, as flannel's plugin does: one range per
    family the subnet file carries (only IPv6 on an IPv6-only network)."""
    ranges, routes, networks = [], [], []
    for network, subnet in ((lease.network, lease.subnet), (lease.ipv6_network, lease.ipv6_subnet)):
        if subnet is not None:
            ranges.append([{"subnet": str(subnet.network), "gateway": str(subnet.ip)}])
            routes.append({"dst": str(network)})
            networks.append(network)
    ipam["ranges"] = ranges
    ipam.setdefault("routes", routes)
    return networks


def _ipv4_ranges(ipam: dict) -> list:
    """[(key path, subnet text)] of the IPv4 ranges a conflist's ipam section names."""
    found = []
    members = [("ipam", ipam)] if "subnet" in ipam else []
    ranges = ipam.get("ranges")
    for i, raw_set in enumerate(ranges if isinstance(ranges, list) else []):
        for j, raw in enumerate(raw_set if isinstance(raw_set, list) else []):
            members.append((f"ipam.ranges[{i}][{j}]", raw))
    for where, raw in members:
        text = raw.get("subnet") if isinstance(raw, dict) else None
        try:
            if isinstance(text, str) and ipaddress.ip_network(text, strict=False).version == 4:
                found.append((f"{where}.subnet", text))
        except ValueError:
            continue  # IPAM's own validation names it
    return found


def _refuse_ipv4_on_ipv6_only(name: str, ipam: dict, subnet_path: str) -> None:
    """Explicit IPv4 ranges on a network whose subnet file says it is IPv6-only: refused
    before anything is built (the pod could never reach another node over IPv4)."""
    try:
        lease = subnet_file.read(subnet_path)
    except (OSError, subnet_file.SubnetFileError):
        return  # no weft lease here: weft runs as a plain bridge plugin with its own ranges
    if lease.network is not None:
        return
    wrong = _ipv4_ranges(ipam)
    if wrong:
        where, text = wrong[0]
        raise CniError(INVALID_NETCONF, f"{where} {text!r} is an IPv4 range, but network {name} is IPv6-only "
                       f"(EnableIPv4 false; subnet file {subnet_path} has no IPv4 subnet): remove the IPv4 "
                       "ranges, or drop ipam.ranges and let weft fill in the node's IPv6 subnet")


def load(conf: dict, command: str) -> WeftConf:
    """conf has passed the shared checks (version, name); validate weft's own keys."""
    name = conf["name"]

    def opt(key, kind, default, absolute=False):
        value = netconf.typed(conf, key, kind, "", default)
        if absolute and not value.startswith("/"):  # relative: the runtime's cwd would decide
            raise CniError(INVALID_NETCONF, f"{key} {value!r} must be an absolute path")
        return value

    bridge = opt("bridge", str, DEFAULT_BRIDGE)
    try:
        validate_ifname(bridge)
    except CniError as exc:
        raise CniError(INVALID_NETCONF, exc.msg.replace("CNI_IFNAME", "bridge"))
    log_level = opt("logLevel", str, "info")
    if log_level not in invocation.LOG_LEVELS:
        raise CniError(INVALID_NETCONF, f"logLevel {log_level!r} is not one of {', '.join(invocation.LOG_LEVELS)}")
    mtu = opt("mtu", int, None)
    if mtu is not None and not is_mtu(mtu):
        raise CniError(INVALID_NETCONF, f"mtu {mtu} is out of range (68-65535)")
    lock_timeout = opt("lockTimeout", (int, float), DEFAULT_LOCK_TIMEOUT)
    if not 0 < lock_timeout <= 300:  # typed() has refused a bool
        raise CniError(INVALID_NETCONF, f"lockTimeout {lock_timeout!r} must be a number of seconds "
                       "in (0, 300]")
    ip_masq = opt("ipMasq", bool, None)
    is_default_gateway = opt("isDefaultGateway", bool, True)
    is_gateway = opt("isGateway", bool, True) or is_default_gateway
    ipam = _ipam_section(conf)
    delegate_conf = conf
    cluster_networks = []
    subnet_path = opt("subnetFile", str, paths.subnet_file(paths.RUN_DIR, name), absolute=True)
    lease = None
    masq_families = (4, 6)
    if _has_ranges(ipam) and command == "ADD":
        _refuse_ipv4_on_ipv6_only(name, ipam, subnet_path)
    if not _has_ranges(ipam):
        if command in ("ADD", "STATUS", "CHECK"):
            lease = _read_subnet_file(subnet_path, command)
        else:  # DEL and GC work without a lease; use it when present
            try:
                lease = subnet_file.read(subnet_path)
            except (OSError, subnet_file.SubnetFileError):
                lease = None
    if lease is not None:
        # _fill_from_lease sets keys of the ipam section only: a copy of it is enough
        delegate_conf = {**conf, "ipam": dict(conf["ipam"])}
        cluster_networks = _fill_from_lease(delegate_conf["ipam"], lease)
        if mtu is None:
            mtu = lease.mtu
        if ip_masq is None:  # the network's IPMasq, per family (IPv4Masq/IPv6Masq)
            masq_families = tuple(v for v in (4, 6) if lease.masquerades(v))
            ip_masq = bool(masq_families)
    prev = conf.get("prevResult")
    return WeftConf(
        name=name,
        version=conf["cniVersion"],
        bridge=bridge,
        is_gateway=is_gateway,
        is_default_gateway=is_default_gateway,
        force_address=opt("forceAddress", bool, False),
        mtu=mtu or DEFAULT_MTU,
        hairpin_mode=opt("hairpinMode", bool, False),
        ip_masq=bool(ip_masq),
        ip_masq_families=masq_families,
        allow_spoofing=opt("allowSpoofing", bool, False),
        subnet_file=subnet_path,
        data_dir=opt("dataDir", str, DEFAULT_DATA_DIR, absolute=True),
        agent_socket=opt("agentSocket", str, DEFAULT_AGENT_SOCKET),
        log_file=opt("logFile", str, DEFAULT_LOG_FILE, absolute=True),
        lock_timeout=float(lock_timeout),
        ipam_type=ipam["type"],
        delegate_conf=delegate_conf,
        cluster_networks=cluster_networks,
        runtime_config=netconf.runtime_config(conf),
        prev_result=prev if isinstance(prev, dict) else None,
        raw=conf,
    )


def requested_mac(cfg: WeftConf, env) -> str:
    """runtimeConfig.mac, then args.cni.mac, then CNI_ARGS MAC=; '' when none."""
    sources = (("runtimeConfig.mac", cfg.runtime_config.get("mac")),
               ("args.cni.mac", netconf.cni_args(cfg.raw).get("mac")), ("CNI_ARGS MAC", env.args.get("MAC")))
    where, mac = next(((w, v) for w, v in sources if v), ("", ""))
    if not isinstance(mac, str):
        raise CniError(INVALID_NETCONF, f"requested MAC address {where} must be a string, got {mac!r}")
    if mac:
        parts = mac.split(":")
        if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                      for p in parts):
            raise CniError(INVALID_NETCONF, f"requested MAC address {where} {mac!r} is not of the form "
                           "02:42:ac:11:00:02")
        if int(parts[0], 16) & 1:
            raise CniError(INVALID_NETCONF, f"requested MAC address {where} {mac!r} is a multicast address")
    return mac.lower()

