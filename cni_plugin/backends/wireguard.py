"""Backend "wireguard": pod traffic between nodes encrypted, one WireGuard peer per node.

Per network, this node has one device `weft-wg.<ListenPort>` (the kernel's WireGuard
where the module exists, else wireguard-go: datapath/wireguard.py), address
<subnet>.0/32, MTU = the smallest of underlay MTU - 60 (IPv4 underlay) and - 80 (IPv6
underlay) over the node's underlay families, listening on ListenPort (both families).
Per remote lease: one peer (its PublicKey; endpoint PublicIP:ListenPort, or
[PublicIPv6]:ListenPort when the two nodes share only an IPv6 underlay: one WireGuard
peer has one endpoint, so when they share both families, both inner families ride
IPv4; AllowedIPs = its subnet, plus its IPv6 subnet when dual-stack), then the route
`remote subnet dev weft-wg.<port>` (no gateway: the device picks the peer by AllowedIPs).

Keys: the node's X25519 private key is 32 random bytes clamped as X25519 wants them
(what `wg genkey` makes), made on first use, kept base64 in
<state-dir>/<network>/wireguard.key (mode 0600, never in etcd, never logged) and
reused across restarts; the lease publishes only the public key, which the
`cryptography` package derives in a short-lived child process (importing it maps
~14 MiB of OpenSSL and bindings into whatever process does, and weftd needs it only at
start and on rotation).  rotate_key() writes a new one there, sets it on the device and returns the
BackendData to publish; peers pick it up from the watch (weftd does this on SIGHUP).

Config keys: ListenPort [51820].  BackendData: {PublicKey, ListenPort}; a malformed
PublicKey (not 32 bytes of base64) or ListenPort is a BackendDataError, so such a
lease is never programmed.
"""

import base64
import binascii
import ipaddress
import os
import sys
from dataclasses import dataclass

from ..checks import is_port
from ..datapath.wireguard import WgPeer, endpoint_text
from . import register
from .base import ROUTE, Backend, BackendDataError, Device, SetupResult

PEER = "peer"  # device entry: public key -> (endpoint "ip:port", allowed IPs as sorted CIDR text)
LISTENER = "listener"  # device entry: device name -> (listen port, fingerprint of the private key)
DEFAULT_PORT = 51820
OVERHEAD = {4: 60, 6: 80}  # outer IP 20/40 + UDP 8 + WireGuard header 16 + tag 16
KEY_FILE = "wireguard.key"
KEY_BYTES = 32


def device_name(port: int) -> str:
    return f"weft-wg.{port}"


def check_key(value, what: str = "PublicKey") -> str:
    """A WireGuard key as base64 text of exactly 32 bytes, or BackendDataError."""
    shown = repr(value)[:60]
    if not isinstance(value, str):
        raise BackendDataError(f"{what} {shown} is not a WireGuard key (base64 text of 32 bytes)")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BackendDataError(f"{what} {shown} is not base64 (a WireGuard key is 32 bytes, "
                               "44 characters of base64)") from None
    if len(raw) != KEY_BYTES:
        raise BackendDataError(f"{what} {shown} is {len(raw)} bytes, a WireGuard key is {KEY_BYTES}")
    return value


def _port(value, what: str) -> int:
    if not is_port(value):
        raise BackendDataError(f"{what} {value!r} must be an integer from 1 to 65535")
    return value


# -- keys ---------------------------------------------------------------------------------

def new_private_key() -> str:
    """A new X25519 private key: random bytes, clamped (RFC 7748 section 5)."""
    raw = bytearray(os.urandom(KEY_BYTES))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return base64.b64encode(bytes(raw)).decode()


# run by public_key_of() in a child interpreter: the private key comes on stdin, never
# on a command line; the public key goes to stdout
_DERIVE = """
import base64, sys
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
key = X25519PrivateKey.from_private_bytes(base64.b64decode(sys.stdin.read().strip(), validate=True))
print(base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode())
"""
DERIVE_TIMEOUT = 60.0
_derived = {}  # private key -> public key: the last one, so start-up derives once


def public_key_of(private_key: str) -> str:
    """The X25519 public key of `private_key` (base64 both), from `cryptography` in a
    child interpreter (see the module doc); BackendDataError when it cannot answer."""
    import subprocess

    if private_key in _derived:
        return _derived[private_key]
    try:
        child = subprocess.run([sys.executable, "-I", "-c", _DERIVE], input=private_key, capture_output=True,
                               text=True, timeout=DERIVE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendDataError(f"cannot derive the WireGuard public key: {exc}") from None
    public = child.stdout.strip()
    if child.returncode != 0 or not public:
        problem = (child.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise BackendDataError(f"cannot derive the WireGuard public key (the cryptography package, "
                               f"run by {sys.executable}): {problem}")
    _derived.clear()
    _derived[private_key] = check_key(public, "the derived public key")
    return public


def key_path(state_dir: str, network: str) -> str:
    return os.path.join(state_dir, network, KEY_FILE)


def load_or_create_key(state_dir: str, network: str) -> str:
    """This node's private key for `network`: read from its 0600 file, made when absent.
    An unreadable or malformed file is an error naming it (never silently replaced:
    peers would lose the node until its new key spread)."""
    path = key_path(state_dir, network)
    try:
        with open(path) as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return write_new_key(state_dir, network)
    except OSError as exc:
        raise BackendDataError(f"cannot read the WireGuard key {path}: {exc.strerror}") from None
    try:
        return check_key(text, f"the WireGuard key in {path}")
    except BackendDataError as exc:
        raise BackendDataError(f"{exc}; delete {path} to make a new one (or send weftd SIGHUP)") from None


def key_fingerprint(private_key: str) -> str:
    """A short digest of a private key, to compare and log it without showing it."""
    import hashlib

    return hashlib.sha256(private_key.encode()).hexdigest()[:12] if private_key else "none"


def write_new_key(state_dir: str, network: str) -> str:
    from ..fsutil import write_atomic

    key = new_private_key()
    write_atomic(key_path(state_dir, network), key + "\n", mode=0o600, make_dirs=True)
    return key


@dataclass(frozen=True)
class WireguardConfig:
    listen_port: int = DEFAULT_PORT


@dataclass(frozen=True)
class WireguardData:
    """A lease's BackendData: the node's public key ("" when absent) and its port."""

    public_key: str = ""
    listen_port: int = DEFAULT_PORT


@register
class Wireguard(Backend):
    name = "wireguard"
    CONFIG_KEYS = ("ListenPort",)
    DEVICE_KINDS = (LISTENER, PEER)
    NOTIFIED_KINDS = frozenset({ROUTE})  # listener and peers: no notification, read every pass

    def __init__(self, config, log=None):
        super().__init__(config, log)
        self.driver = None  # datapath.wireguard's Kernel/UserspaceWireGuard, after setup()
        self.public_key = ""
        self._private_key = ""  # kept to set it again when the device lost it; never logged
        self.device_problem = None  # what the last read found wrong with the device itself

    # -- network config ------------------------------------------------------------
    @classmethod
    def parse_config(cls, section: dict) -> WireguardConfig:
        return WireguardConfig(listen_port=_port(section.get("ListenPort", DEFAULT_PORT), "Backend.ListenPort"))

    @classmethod
    def config_clash(cls, mine: WireguardConfig, theirs: WireguardConfig, other: str):
        if mine.listen_port == theirs.listen_port:
            return (f"Backend.ListenPort {mine.listen_port} is already used by network {other}; every "
                    "WireGuard network needs its own port")
        return None

    # -- lease data ----------------------------------------------------------------
    @classmethod
    def parse_lease_data(cls, data: dict) -> WireguardData:
        key = data.get("PublicKey", "")
        if key != "":
            check_key(key)
        return WireguardData(public_key=key, listen_port=_port(data.get("ListenPort", DEFAULT_PORT), "ListenPort"))

    @classmethod
    def lease_data_json(cls, data: WireguardData) -> dict:
        return {"PublicKey": data.public_key, "ListenPort": data.listen_port}

    @classmethod
    def device_label(cls, data: WireguardData) -> str:
        return device_name(data.listen_port)

    @classmethod
    def local_lease_data(cls, config: WireguardConfig, node, network: str) -> WireguardData:
        key = load_or_create_key(node.state_dir, network)
        return WireguardData(public_key=public_key_of(key), listen_port=config.listen_port)

    # -- this node -------------------------------------------------------------------
    def setup(self, nl, network, lease, node, underlay, underlay6=None) -> SetupResult:
        from ..datapath.wireguard import ensure_wireguard

        name = device_name(self.config.listen_port)
        private_key = load_or_create_key(node.state_dir, network.name)
        self.public_key = public_key_of(private_key)
        # the subnet's .0 (and ::) on the device, as VXLAN does: the node answers on it
        addresses = [ipaddress.ip_interface(f"{s.network_address}/{s.max_prefixlen}") for s in lease.subnets]
        mtu = min(local.mtu - OVERHEAD[version] for version, local in ((4, underlay), (6, underlay6))
                  if local is not None)
        device = ensure_wireguard(nl, name, private_key, self.config.listen_port, mtu, addresses,
                                  os.path.join(node.run_dir, "wireguard"))
        self.driver = device.driver
        self._private_key = private_key
        self.device_problem = None
        if self.log is not None:
            self.log.info(f"WireGuard device {name}: {device.driver.implementation} implementation "
                          f"({device.action}), public key {self.public_key}, port {self.config.listen_port}",
                          extra={"network": network.name, "node": node.name})
        return SetupResult(mtu, Device(device.index, name), device.action, device.reason)

    def rotate_key(self, nl, network, lease, node) -> WireguardData:
        private_key = write_new_key(node.state_dir, network.name)
        self.public_key = public_key_of(private_key)
        self._private_key = private_key
        if self.driver is not None:
            self.driver.configure(private_key, self.config.listen_port)
        return WireguardData(public_key=self.public_key, listen_port=self.config.listen_port)

    def status(self) -> dict:
        return {"wireguard": {"device": device_name(self.config.listen_port),
                              "implementation": getattr(self.driver, "implementation", None),
                              "publicKey": self.public_key, "listenPort": self.config.listen_port,
                              "deviceProblem": self.device_problem}}

    # -- device entries: peers ---------------------------------------------------------
    # The device's own listen port and key are an entry too (LISTENER): wireguard-go
    # that could not bind its port (taken by another process, or by a wireguard-go still
    # exiting) reports port 0 and receives nothing, a hand-made `wg set` may change either;
    # the read every pass already carries both, so a mismatch is drift like a lost peer.
    def local_entries(self, plan) -> list:
        return [(LISTENER, plan.device.name, (self.config.listen_port, key_fingerprint(self._private_key)))]

    def read_device_entries(self, nl, plan) -> dict:
        private, port, peers = self.driver.state()
        entries = {(PEER, key): (peer.endpoint, peer.allowed_ips) for key, peer in peers.items()}
        entries[(LISTENER, plan.device.name)] = (port, key_fingerprint(private))
        self.device_problem = self._listener_problem(port, private)
        return entries

    def _listener_problem(self, port: int, private: str):
        if port != self.config.listen_port:
            bound = "its UDP socket is not bound" if port == 0 else f"listening on {port}"
            return (f"{device_name(self.config.listen_port)} reports listen port {port}, not "
                    f"{self.config.listen_port} ({bound}): no peer can reach this node; being repaired")
        if private != self._private_key:
            return f"{device_name(self.config.listen_port)} holds another private key; being repaired"
        return None

    def write_device_entry(self, nl, plan, kind: str, key, value) -> None:
        if kind == LISTENER:
            self.driver.configure(self._private_key, value[0])
            return
        endpoint, allowed_ips = value
        self.driver.set_peer(WgPeer(key, endpoint, allowed_ips))

    def delete_device_entry(self, nl, plan, kind: str, key, value) -> bool:
        if kind == LISTENER:
            return False  # always desired: never stale
        return self.driver.remove_peer(key)

    def describe_device_entry(self, plan, kind: str, key, value) -> str:
        if kind == LISTENER:
            port, fingerprint = value if value is not None else ("?", "?")
            return f"device {key} listen port {port} private key #{fingerprint}"
        endpoint, allowed_ips = value if value is not None else ("?", ())
        return f"peer {key} endpoint {endpoint} allowed-ips {','.join(allowed_ips)} dev {plan.device.name}"

    # -- remote leases (pure) ------------------------------------------------------------
    def check_peer(self, plan, lease) -> None:
        if not plan.device.index:
            raise ValueError("the plan has no WireGuard device")
        data = lease.backend_data
        if not data.public_key:
            raise ValueError("no PublicKey (its agent has not published one)")
        if data.public_key == getattr(plan.local.backend_data, "public_key", None):
            raise ValueError("its PublicKey is this node's own key; two nodes cannot share a key")

    def peer_entries(self, plan, lease) -> list:
        data = lease.backend_data
        endpoint = endpoint_text(plan.peer_address(lease, plan.route(lease)[4]), data.listen_port)
        subnets = [subnet for subnet, _ in plan.inner_subnets(lease)]
        allowed = tuple(sorted(str(s) for s in subnets))
        return [(PEER, data.public_key, (endpoint, allowed))] + \
            [(ROUTE, s, (None, plan.device.index, False)) for s in subnets]

    def peer_owned(self, plan, lease) -> list:
        key = getattr(lease.backend_data, "public_key", "")
        return [(PEER, key, None)] if key else []

