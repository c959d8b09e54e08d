"""WireGuard devices: one small interface, two implementations.

  KernelWireGuard     the kernel's `wireguard` link type, configured over generic
                      netlink (pyroute2's WireGuard socket)
  UserspaceWireGuard  `wireguard-go` (Debian package wireguard-go) where the kernel
                      has no module: a tun link plus a process configured over its
                      UAPI socket (the key=value text protocol `wg` speaks)

ensure_wireguard() picks the kernel when it can create (or finds) a `wireguard` link
and falls back to wireguard-go when the kernel answers "Unknown device type"
(EOPNOTSUPP); the caller logs `implementation`.  Both speak the same values: keys
as base64 text, peers as WgPeer.

wireguard-go details that shape this module:
- its UAPI socket is /var/run/wireguard/<dev>.sock, and `ip netns exec` does not
  separate /run, so node namespaces on one machine would collide.  weft starts it
  in a private mount namespace with <sock-dir> bound over /run: the socket appears
  at <sock-dir>/wireguard/<dev>.sock and nowhere else (`wg show` on the node does
  not see it; `weftctl status` and the agent do).
- it runs in the foreground in its own session (stdout/stderr to <sock-dir>/<dev>.log),
  so weft knows its PID (<sock-dir>/<dev>.pid) and it outlives weftd: the datapath
  stays across an agent restart, as with the other backends.  Stop it by that PID.
- the private key goes over the socket, never on a command line; a "get" answer
  carries the private key too, so nothing here logs or returns raw UAPI text.
"""

import base64
import errno
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from typing import NamedTuple, Optional

from ..fsutil import write_atomic
from .errors import DatapathError, LinkConflict, NetlinkError
from .vxlan_device import fix_addresses

KERNEL, USERSPACE = "kernel", "userspace"
WIREGUARD_GO = "wireguard-go"
INSTALL_HINT = ("the kernel has no WireGuard module and wireguard-go is not installed: "
                "apt-get install --no-install-recommends wireguard-go (or load the wireguard "
                "kernel module)")
UAPI_TIMEOUT = 5.0
START_TIMEOUT = 10.0
RECV_BYTES = 1 << 18



def _connect_by_directory(sock, path: str) -> None:
    """connect() to a unix socket whose path may be longer than AF_UNIX allows (108
    bytes: a deep --run-dir): through a descriptor of its directory,
    /proc/self/fd/<n>/<name>, which is always short."""
    if len(path.encode()) < 100:
        sock.connect(path)
        return
    directory, name = os.path.split(path)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)

class WgPeer(NamedTuple):
    """One peer as weft programs it: endpoint "ip:port", allowed IPs as sorted CIDR text."""

    public_key: str
    endpoint: str
    allowed_ips: tuple


class WireGuardError(DatapathError):
    """A WireGuard device could not be made, read or configured."""


def key_to_hex(key: str) -> str:
    return base64.b64decode(key, validate=True).hex()


def hex_to_key(text: str) -> str:
    return base64.b64encode(bytes.fromhex(text)).decode()


def endpoint_text(ip, port: int) -> str:
    """A peer endpoint as WireGuard prints it: ip:port, [ipv6]:port."""
    ip = ipaddress.ip_address(str(ip))
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _split_endpoint(text: str):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


# -- userspace: wireguard-go over its UAPI socket ---------------------------------------

class UserspaceWireGuard:
    implementation = USERSPACE

    def __init__(self, name: str, sock_dir: str):
        self.name = name
        self.sock_dir = sock_dir
        self.socket_path = os.path.join(sock_dir, "wireguard", f"{name}.sock")
        self.pid_path = os.path.join(sock_dir, f"{name}.pid")

    def alive(self) -> bool:
        return self.probe() is None

    def probe(self, attempts: int = 1) -> Optional[str]:
        """None when wireguard-go answers on the socket, else why not (after `attempts`)."""
        for attempt in range(attempts):
            try:
                self._request("get=1\n")
                return None
            except WireGuardError as exc:
                problem = str(exc)
            if attempt + 1 < attempts:
                time.sleep(0.2)
        return problem

    def pid(self) -> Optional[int]:
        try:
            with open(self.pid_path) as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        """Start wireguard-go for this device in this network namespace (see module doc)."""
        exe = shutil.which(WIREGUARD_GO)
        if exe is None:
            raise WireGuardError(INSTALL_HINT)
        os.makedirs(self.sock_dir, mode=0o700, exist_ok=True)
        log = open(os.path.join(self.sock_dir, f"{self.name}.log"), "ab")
        # every value is a positional parameter of the script, never part of its text
        script = 'mount --bind "$1" /run && exec "$2" -f "$3"'
        try:
            proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                                     "sh", self.sock_dir, exe, self.name],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            raise WireGuardError(f"cannot start {exe} for {self.name}: {exc.strerror}") from None
        finally:
            log.close()
        # reap it if it exits while we run (it normally outlives this process)
        threading.Thread(target=proc.wait, name=f"reap-{self.name}", daemon=True).start()
        write_atomic(self.pid_path, f"{proc.pid}\n", mode=0o644, durable=False)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.alive():
            if proc.poll() is not None:
                raise WireGuardError(f"{exe} for {self.name} exited with {proc.returncode}; see "
                                     f"{os.path.join(self.sock_dir, self.name + '.log')}")
            if time.monotonic() > deadline:
                raise WireGuardError(f"{exe} for {self.name} did not open {self.socket_path} "
                                     f"within {START_TIMEOUT:.0f}s")
            time.sleep(0.05)

    def _request(self, text: str) -> list:
        """Send one UAPI request; the answer's key=value pairs (errno checked, never logged)."""
        return _pairs(self._exchange(text), self.name)

    def _exchange(self, text: str) -> bytes:
        """One UAPI request and its raw answer (it may hold the private key: never logged).
        wireguard-go writes a "get" answer 4 KiB at a time (~350 bytes per peer): the
        pieces are joined once at the end (appending each to the bytes read so far copied
        the whole answer again per piece: ~160 ms at 5,000 peers, on every pass)."""
        pieces, tail = [], b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(UAPI_TIMEOUT)
                _connect_by_directory(sock, self.socket_path)
                sock.sendall((text + "\n").encode())
                while tail != b"\n\n":  # an empty line ends the answer
                    piece = sock.recv(RECV_BYTES)
                    if not piece:
                        break
                    pieces.append(piece)
                    tail = (tail + piece)[-2:]
        except OSError as exc:
            raise WireGuardError(f"wireguard-go UAPI {self.socket_path}: "
                                 f"{exc.strerror or exc}") from None
        return b"".join(pieces)

    def state(self) -> tuple:
        """(private key base64 or "", listen port, {public key: WgPeer}).  Read on every
        reconcile pass (peers send no change notification), so kept lean: wireguard-go
        prints each allowed IP as a masked prefix, which is already the text weft plans."""
        private, port, peers = "", 0, {}
        current = endpoint = None
        ips = []
        text = "\n" + _checked(self._exchange("get=1\n"), self.name)
        for key, value in _STATE_LINE.findall(text):  # only the lines weft compares (C speed)
            if key == "public_key":
                if current is not None:
                    peers[current] = WgPeer(current, endpoint or "", tuple(sorted(ips)))
                current, endpoint, ips = hex_to_key(value), None, []
            elif current is None:
                if key == "private_key":
                    private = hex_to_key(value)
                elif key == "listen_port":
                    port = int(value)
            elif key == "allowed_ip":
                ips.append(value)
            elif key == "endpoint":
                endpoint = value
        if current is not None:
            peers[current] = WgPeer(current, endpoint or "", tuple(sorted(ips)))
        return private, port, peers

    def configure(self, private_key: str, listen_port: int) -> None:
        try:
            self._request(f"set=1\nprivate_key={key_to_hex(private_key)}\nlisten_port={listen_port}\n")
        except WireGuardError as exc:
            if f"(errno -{errno.EADDRINUSE})" not in str(exc):
                raise
            raise WireGuardError(f"wireguard-go {self.name} cannot listen on UDP port {listen_port}: another "
                                 "socket holds it in this network namespace (another process, or a "
                                 "wireguard-go still exiting); retrying") from None

    def set_peer(self, wanted: WgPeer) -> None:
        lines = [f"set=1", f"public_key={key_to_hex(wanted.public_key)}", f"endpoint={wanted.endpoint}",
                 "replace_allowed_ips=true"] + [f"allowed_ip={ip}" for ip in wanted.allowed_ips]
        self._request("\n".join(lines) + "\n")

    def remove_peer(self, public_key: str) -> bool:
        """Remove one peer without reading the device first (a "get" carries every peer:
        ~1.7 MB at 5,000, and a watch event removing one lease must not cost that);
        update_only keeps an absent peer from being created on the way.  wireguard-go
        does not say whether the peer was there: True."""
        self._request(f"set=1\npublic_key={key_to_hex(public_key)}\nupdate_only=true\nremove=true\n")
        return True


_ERRNO = re.compile(r"^errno=(-?\d+)$", re.M)
# a line starts after a newline (state() puts one before the answer's first line)
_STATE_LINE = re.compile(r"\n(private_key|listen_port|public_key|endpoint|allowed_ip)=([^\n]*)")
ERRNO_TAIL = 64  # "errno=<n>" is an answer's last line


def _checked(data: bytes, name: str) -> str:
    """A UAPI answer as text, its errno checked (the text is never logged)."""
    text = data.decode()
    found = _ERRNO.search(text, max(0, len(text) - ERRNO_TAIL))
    code = found.group(1) if found else None
    if code != "0":
        why = os.strerror(abs(int(code))) if code and code.lstrip("-").isdigit() else "no errno"
        raise WireGuardError(f"wireguard-go {name} refused the request: {why} (errno {code})")
    return text


def _pairs(data: bytes, name: str) -> list:
    """A UAPI answer's key=value pairs, its errno checked."""
    return [line.split("=", 1) for line in _checked(data, name).split("\n") if "=" in line]


# -- kernel: generic netlink through pyroute2 ------------------------------------------

class KernelWireGuard:
    implementation = KERNEL

    def __init__(self, name: str):
        self.name = name

    def _call(self, what: str, **kwargs):
        from pyroute2 import WireGuard
        from pyroute2.netlink.exceptions import NetlinkError as _PyrouteError

        try:
            with WireGuard() as wg:
                return wg.info(self.name) if what == "info" else wg.set(self.name, **kwargs)
        except _PyrouteError as exc:
            raise NetlinkError(exc.code, f"WireGuard {what} on {self.name}") from None

    def state(self) -> tuple:
        private, port, peers = "", 0, {}
        for msg in self._call("info"):
            private = private or _key_text(msg.get("WGDEVICE_A_PRIVATE_KEY"))
            port = port or (msg.get("WGDEVICE_A_LISTEN_PORT") or 0)
            for item in msg.get("WGDEVICE_A_PEERS") or ():
                key = _key_text(item.get("WGPEER_A_PUBLIC_KEY"))
                endpoint = item.get("WGPEER_A_ENDPOINT") or {}
                text = endpoint_text(endpoint["addr"], endpoint["port"]) if endpoint.get("addr") else ""
                ips = tuple(sorted(str(ipaddress.ip_network(f"{a['addr']}", strict=False))
                                   for a in (item.get("WGPEER_A_ALLOWEDIPS") or ()) if a.get("addr")))
                old = peers.get(key)  # a large peer list spans several messages
                peers[key] = WgPeer(key, text or (old.endpoint if old else ""),
                                    tuple(sorted(set(ips) | set(old.allowed_ips if old else ()))))
        return private, port, peers

    def configure(self, private_key: str, listen_port: int) -> None:
        self._call("set", private_key=private_key, listen_port=listen_port)

    def set_peer(self, wanted: WgPeer) -> None:
        host, port = _split_endpoint(wanted.endpoint)
        self._call("set", peer={"public_key": wanted.public_key, "endpoint_addr": host,
                                "endpoint_port": port, "replace_allowed_ips": True,
                                "allowed_ips": list(wanted.allowed_ips)})

    def remove_peer(self, public_key: str) -> bool:
        """Remove one peer; False when it was not there (the kernel answers ENODEV)."""
        try:
            self._call("set", peer={"public_key": public_key, "remove": True})
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
        return True


def _key_text(value) -> str:
    """pyroute2 hands keys back as base64 bytes or text; weft speaks base64 text."""
    if value is None:
        return ""
    if isinstance(value, dict):
        value = value.get("value", "")
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the device ------------------------------------------------------------------

class WireGuardDevice(NamedTuple):
    """What ensure_wireguard did: action "created" / "updated" (reason lists the fixes) /
    "unchanged"; `driver` is the KernelWireGuard or UserspaceWireGuard to program peers."""

    index: int
    driver: object
    action: str
    reason: str = ""


def _create(nl, name: str, sock_dir: str):
    """A new device: the kernel's if it has WireGuard, else wireguard-go's."""
    try:
        nl.add_link_of_kind(name, "wireguard")
        return KernelWireGuard(name)
    except NetlinkError as exc:
        if exc.code not in (errno.EOPNOTSUPP, errno.ENOENT):
            raise WireGuardError(f"cannot create WireGuard device {name}: {exc.strerror}") from None
    driver = UserspaceWireGuard(name, sock_dir)
    driver.start()
    return driver


def _gone(nl, name: str, wait: float = 3.0) -> bool:
    deadline = time.monotonic() + wait
    while nl.link(name) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def ensure_wireguard(nl, name: str, private_key: str, listen_port: int, mtu: int, addresses: list,
                     sock_dir: str) -> WireGuardDevice:
    """Make `name` a WireGuard device (kernel or wireguard-go) with this key, port, MTU,
    up, holding exactly `addresses` (ip_interface values).  Peers are the caller's.
    A link of that name that is neither (or a tun link wireguard-go no longer serves)
    is a LinkConflict, never deleted."""
    action, changes = "unchanged", []
    link = nl.link(name)
    if link is None:
        driver, action = _create(nl, name, sock_dir), "created"
        link = nl.link(name)
        if link is None:
            raise WireGuardError(f"{name} was created but is not in this namespace")
    elif link.kind == "wireguard":
        driver = KernelWireGuard(name)
    else:
        driver = UserspaceWireGuard(name, sock_dir)
        problem = driver.probe(attempts=5) if link.kind == "tun" else "not a tun link"
        if problem is not None and link.kind == "tun" and _gone(nl, name):
            # a wireguard-go that was exiting (killed, crashed): its tun link went with it
            return ensure_wireguard(nl, name, private_key, listen_port, mtu, addresses, sock_dir)
        if problem is not None:
            raise LinkConflict(f"link {name} exists and is a {link.kind or 'link of unknown kind'} that is "
                               f"not a WireGuard device weft can configure ({problem}); remove it")
    current_key, current_port, _ = driver.state()
    if current_key != private_key or current_port != listen_port:
        driver.configure(private_key, listen_port)
        changes.append("private key" if current_key != private_key else f"listen port -> {listen_port}")
    fixes = {}
    if link.mtu != mtu:
        fixes["mtu"] = mtu
    if not link.up:
        fixes["state"] = "up"
    if fixes:
        nl.set_link(link.index, **fixes)
        changes += [f"{key} -> {value}" for key, value in fixes.items()]
    changes += fix_addresses(nl, link.index, addresses)
    if changes and action == "unchanged":
        action = "updated"
    return WireGuardDevice(link.index, driver, action, "; ".join(changes))
