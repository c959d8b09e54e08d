"""The wireguard backend without root: config keys, lease-data validation, key files,
and the engine's planning/reconcile of peers (a device entry kind) over pure values.

The fakes below stand in for the kernel only in these pure-logic tests; the real
device, peers and traffic are tested in tests/cluster/test_wireguard.py.
"""

import base64
import ipaddress
import os
import stat

import pytest

from cni_plugin import backends
from cni_plugin.backends import engine
from cni_plugin.backends.base import ROUTE, BackendDataError, Device
from cni_plugin.backends.wireguard import (LISTENER, PEER, WireguardConfig, WireguardData, check_key, key_path,
                                           load_or_create_key, new_private_key, public_key_of, write_new_key)
from cni_plugin.datapath.underlay import Underlay
from cni_plugin.subnet.lease import ConfigError, Lease, NetworkConfig

UNDERLAY = Underlay(2, "eth0", 1500, ipaddress.ip_network("192.168.77.0/24"))
DEVICE = Device(9, "weft-wg.51820")
WG = backends.get("wireguard")


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def net(backend: dict, **extra) -> NetworkConfig:
    return NetworkConfig.from_dict("n", {"Network": "10.244.0.0/16", "Backend": {"Type": "wireguard", **backend},
                                         **extra})


def lease(n: int, public_key=None, port=51820, v6=False) -> Lease:
    return Lease(subnet=ipaddress.ip_network(f"10.244.{n}.0/24"),
                 public_ip=ipaddress.ip_address(f"192.168.77.{n}"), node_name=f"node{n}",
                 backend_type="wireguard", backend_data=WireguardData(key(n) if public_key is None else public_key, port),
                 ipv6_subnet=ipaddress.ip_network(f"fd00:10:244:{n}::/64") if v6 else None)


class FakeDriver:
    """A WireGuard device's peers as a dict (what KernelWireGuard/UserspaceWireGuard hold)."""

    def __init__(self):
        self.peers = {}
        self.private, self.port = "", 51820

    def state(self):
        from cni_plugin.datapath.wireguard import WgPeer

        return self.private, self.port, {k: WgPeer(k, e, a) for k, (e, a) in self.peers.items()}

    def configure(self, private_key, listen_port):
        self.private, self.port = private_key, listen_port

    def set_peer(self, peer):
        self.peers[peer.public_key] = (peer.endpoint, peer.allowed_ips)

    def remove_peer(self, public_key):
        return self.peers.pop(public_key, None) is not None


class FakeNetlink:
    def __init__(self):
        self.table = {}

    def routes(self, version, proto=None):
        from cni_plugin.datapath.netlink import RouteEntry

        return [RouteEntry(dst, gw, oif, onlink) for dst, (gw, oif, onlink) in self.table.items()
                if dst.version == version]

    def replace_route(self, dst, gateway, oif, onlink):
        self.table[dst] = (gateway, oif, onlink)

    def delete_weft_route(self, dst):
        return self.table.pop(dst, None) is not None


def plan(config: NetworkConfig, peers, local_key=None):
    backend = WG(config.backend)
    backend.driver = FakeDriver()
    return engine.Plan.for_network(backend, config, lease(1, local_key), UNDERLAY, DEVICE, peers)


def test_config_keys_defaults_errors_and_port_clash():
    assert net({}).backend == WireguardConfig(listen_port=51820)
    assert net({"ListenPort": 51900}).backend == WireguardConfig(51900)
    for bad in (0, 70000, True, "51820"):
        with pytest.raises(ConfigError, match=f"network n: Backend.ListenPort {bad!r} must be an integer from 1 to 65535"):
            net({"ListenPort": bad})
    assert WG.config_clash(WireguardConfig(51820), WireguardConfig(51820), "b") == (
        "Backend.ListenPort 51820 is already used by network b; every WireGuard network needs its own port")
    assert WG.config_clash(WireguardConfig(51820), WireguardConfig(51821), "b") is None


def test_lease_data_round_trips():
    mine = lease(3)
    again = Lease.from_json(mine.key, mine.to_json())
    assert again == mine and again.backend_data == WireguardData(key(3), 51820)
    assert '"PublicKey": "' + key(3) in mine.to_json()
    assert Lease.from_json(mine.key, '{"PublicIP": "192.0.2.1", "BackendType": "wireguard"}').backend_data == \
        WireguardData("", 51820)


@pytest.mark.parametrize("data, message", [
    ({"PublicKey": "bm90IGEga2V5"}, "PublicKey 'bm90IGEga2V5' is 9 bytes, a WireGuard key is 32"),
    ({"PublicKey": "%%%"}, "PublicKey '%%%' is not base64"),
    ({"PublicKey": base64.b64encode(b"k" * 33).decode()}, "is 33 bytes"),
    ({"PublicKey": 7}, "PublicKey 7 is not a WireGuard key"),
    ({"PublicKey": key(1), "ListenPort": 0}, "ListenPort 0 must be an integer from 1 to 65535"),
    ({"PublicKey": key(1), "ListenPort": "51820"}, "ListenPort '51820' must be an integer"),
])
def test_malformed_lease_data_is_refused_naming_the_key(data, message):
    with pytest.raises(BackendDataError, match=message):
        WG.parse_lease_data(data)
    text = '{"PublicIP": "192.0.2.1", "BackendType": "wireguard", "BackendData": %s}' % (
        __import__("json").dumps(data))
    with pytest.raises(ConfigError, match=f"lease 10.244.3.0-24: unusable value: .*{message[:12]}"):
        Lease.from_json("10.244.3.0-24", text)


def test_check_key_accepts_only_32_bytes_of_strict_base64():
    assert check_key(key(5)) == key(5)
    with pytest.raises(BackendDataError):
        check_key(key(5)[:-2] + "\n=")


def test_key_file_is_0600_kept_and_a_broken_one_is_an_error(tmp_path):
    first = load_or_create_key(str(tmp_path), "weft")
    path = key_path(str(tmp_path), "weft")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(str(tmp_path), "weft") == first  # kept across restarts
    assert len(base64.b64decode(public_key_of(first))) == 32 and public_key_of(first) != first
    rotated = write_new_key(str(tmp_path), "weft")
    assert rotated != first and load_or_create_key(str(tmp_path), "weft") == rotated
    open(path, "w").write("garbage\n")
    with pytest.raises(BackendDataError, match=f"the WireGuard key in {path} .*delete {path}"):
        load_or_create_key(str(tmp_path), "weft")


def test_keys_are_clamped_and_derived_as_rfc_7748_says_without_cryptography_in_the_caller():
    """The public key comes from a child interpreter (cryptography maps ~14 MiB into the
    process that imports it); RFC 7748 section 6.1's pair checks the derivation."""
    import subprocess
    import sys

    alice = base64.b64encode(bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    assert base64.b64decode(public_key_of(alice.decode())).hex() == \
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    raw = base64.b64decode(new_private_key())
    assert len(raw) == 32 and raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40
    code = ("import sys\nfrom cni_plugin.backends.wireguard import new_private_key, public_key_of\n"
            "public_key_of(new_private_key())\nprint('cryptography' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    with pytest.raises(BackendDataError, match="cannot derive the WireGuard public key"):
        public_key_of("bm90IGEga2V5")  # 9 bytes


def test_local_lease_data_publishes_the_public_key_only(tmp_path):
    node = type("Node", (), {"state_dir": str(tmp_path)})()
    data = WG.local_lease_data(WireguardConfig(51830), node, "weft")
    private = open(key_path(str(tmp_path), "weft")).read().strip()
    assert data == WireguardData(public_key_of(private), 51830)
    assert private not in str(WG.lease_data_json(data))


def test_planning_peer_then_route_and_dual_stack_allowed_ips():
    config = net({}, IPv6Network="fd00:10:244::/48", EnableIPv6=True)
    p = plan(config, [])
    assert engine.peer_entries(p, lease(2, v6=True)) == [
        (PEER, key(2), ("192.168.77.2:51820", ("10.244.2.0/24", "fd00:10:244:2::/64"))),
        (ROUTE, ipaddress.ip_network("10.244.2.0/24"), (None, DEVICE.index, False)),
        (ROUTE, ipaddress.ip_network("fd00:10:244:2::/64"), (None, DEVICE.index, False))]
    assert WG.device_label(WireguardData(key(1), 51830)) == "weft-wg.51830"


@pytest.mark.parametrize("peer, problem", [
    (lease(2, public_key=""), "no PublicKey"),
    (lease(2, public_key=key(1)), "this node's own key"),
])
def test_unusable_peers_say_why_and_are_not_programmed(peer, problem):
    p = plan(net({}), [peer])
    desired = engine.desired_state(p)
    assert [kind for kind, _ in desired.entries] == [LISTENER] and problem in desired.errors[0]
    with pytest.raises(engine.OverlayError, match=problem):
        engine.apply_peer(FakeNetlink(), p, peer)


def test_reconcile_writes_repairs_and_removes_stale_peers():
    nl = FakeNetlink()
    p = plan(net({}), [lease(2), lease(3)])
    driver = p.backend.driver
    driver.peers[key(9)] = ("192.168.77.9:51820", ("10.244.9.0/24",))  # a node that left
    driver.peers[key(3)] = ("192.168.77.99:1", ("10.244.3.0/24",))  # wrong endpoint
    drift = engine.reconcile(nl, p)
    assert driver.peers == {key(2): ("192.168.77.2:51820", ("10.244.2.0/24",)),
                            key(3): ("192.168.77.3:51820", ("10.244.3.0/24",))}
    assert set(nl.table) == {ipaddress.ip_network("10.244.2.0/24"), ipaddress.ip_network("10.244.3.0/24")}
    assert drift.removed == 1 and drift.added == 4
    assert any(d.startswith(f"peer {key(9)} endpoint 192.168.77.9:51820") and "stale" in d for d in drift.details)
    assert engine.reconcile(nl, p).changed is False  # converged


def test_a_quiet_pass_reads_and_repairs_the_peers_only():
    """The kinds without notifications (peers) are read and repaired on every pass; a
    missing route waits for the notification-driven (or resync) full read."""
    nl = FakeNetlink()
    p = plan(net({}), [lease(2), lease(3)])
    engine.reconcile(nl, p)
    driver = p.backend.driver
    del driver.peers[key(3)]                                         # `wg set ... peer remove`
    driver.peers[key(9)] = ("192.168.77.9:51820", ("10.244.9.0/24",))  # a peer no lease wants
    del nl.table[ipaddress.ip_network("10.244.2.0/24")]
    kinds = p.unnotified_kinds()
    assert kinds == {PEER, LISTENER}
    actual = engine.read_state(nl, p, kinds)
    assert {kind for kind, _ in actual} == {PEER, LISTENER}
    drift = engine.reconcile_from(nl, p, actual, kinds=kinds)
    assert (drift.added, drift.removed) == (1, 1)
    assert set(driver.peers) == {key(2), key(3)}
    assert ipaddress.ip_network("10.244.2.0/24") not in nl.table  # not this pass's business
    assert engine.reconcile(nl, p).added == 1  # the full read puts the route back


def test_a_device_that_lost_its_port_or_key_is_drift_repaired_every_pass():
    """wireguard-go that could not bind its port reports port 0; a `wg set` may change
    the port or key: the quiet pass's read sees it, writes both back, says what it was."""
    nl = FakeNetlink()
    p = plan(net({}), [lease(2)])
    p.backend._private_key = new_private_key()
    engine.reconcile(nl, p)
    driver = p.backend.driver
    assert (driver.private, driver.port) == (p.backend._private_key, 51820)
    for private, port in ((driver.private, 0), (new_private_key(), 51820)):
        driver.private, driver.port = private, port
        actual = engine.read_state(nl, p, p.unnotified_kinds())
        assert p.backend.status()["wireguard"]["deviceProblem"]
        drift = engine.reconcile_from(nl, p, actual, kinds=p.unnotified_kinds())
        assert (driver.private, driver.port) == (p.backend._private_key, 51820) and drift.added == 1
        assert drift.details[0].startswith("device weft-wg.51820 listen port 51820 private key #")
        assert private not in drift.details[0]
        engine.read_state(nl, p, p.unnotified_kinds())
        assert p.backend.status()["wireguard"]["deviceProblem"] is None


def test_rotated_key_replaces_the_old_peer_and_removal_drops_peer_and_route():
    nl = FakeNetlink()
    old, new = lease(2), lease(2, public_key=key(42))
    p = plan(net({}), [old])
    engine.apply_peer(nl, p, old)
    assert set(p.backend.driver.peers) == {key(2)}
    engine.apply_peer(nl, p, new, previous=old)
    assert set(p.backend.driver.peers) == {key(42)}
    drift = engine.remove_peer(nl, p, new)
    assert p.backend.driver.peers == {} and nl.table == {} and drift.removed == 2


# -- wireguard-go's UAPI answer, read over a real unix socket ------------------------

def _uapi_server(tmp_path, answer: bytes, piece: int):
    """A one-connection stand-in for wireguard-go's UAPI socket: reads the request up
    to its empty line, then writes `answer` `piece` bytes at a time (wireguard-go's
    bufio writer sends 4 KiB pieces)."""
    import socket
    import threading

    sock_dir = tmp_path / "wg"
    (sock_dir / "wireguard").mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_dir / "wireguard" / "weft-wg.51820.sock"))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        with conn:
            request = b""
            while not request.endswith(b"\n\n"):
                request += conn.recv(4096)
            for start in range(0, len(answer), piece):
                conn.sendall(answer[start:start + piece])
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return str(sock_dir)


def _get_answer(peers: int, errno: int = 0) -> bytes:
    lines = ["private_key=" + "ab" * 32, "listen_port=51820"]
    for n in range(peers):
        lines += [f"public_key={bytes([n % 256, n // 256]).hex() * 16}", "preshared_key=" + "00" * 32,
                  "protocol_version=1", f"endpoint=192.168.{n // 250}.{n % 250 + 1}:51820",
                  "last_handshake_time_sec=0", "last_handshake_time_nsec=0", "tx_bytes=0", "rx_bytes=0",
                  "persistent_keepalive_interval=0", f"allowed_ip=10.{n // 256}.{n % 256}.0/24"]
    return ("\n".join(lines) + f"\nerrno={errno}\n\n").encode()


@pytest.mark.parametrize("piece", [4096, 1, 4095])
def test_a_large_get_answer_in_pieces_reads_every_peer(tmp_path, piece):
    """Every peer of a 2,000-peer answer sent in pieces, the closing empty line split
    across two pieces included (piece 1)."""
    from cni_plugin.datapath.wireguard import UserspaceWireGuard, hex_to_key

    peers = 2000 if piece > 1 else 50
    driver = UserspaceWireGuard("weft-wg.51820", _uapi_server(tmp_path, _get_answer(peers), piece))
    private, port, found = driver.state()
    assert private == hex_to_key("ab" * 32) and port == 51820 and len(found) == peers
    last = found[hex_to_key(bytes([(peers - 1) % 256, (peers - 1) // 256]).hex() * 16)]
    assert last.endpoint == f"192.168.{(peers - 1) // 250}.{(peers - 1) % 250 + 1}:51820"
    assert last.allowed_ips == (f"10.{(peers - 1) // 256}.{(peers - 1) % 256}.0/24",)


def test_a_refused_request_is_an_error_whatever_its_length(tmp_path):
    from cni_plugin.datapath.wireguard import UserspaceWireGuard, WireGuardError

    driver = UserspaceWireGuard("weft-wg.51820", _uapi_server(tmp_path, _get_answer(300, errno=-22), 4096))
    with pytest.raises(WireGuardError, match="errno -22"):
        driver.state()
