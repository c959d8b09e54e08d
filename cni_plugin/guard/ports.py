"""Port records: what each pod interface of a network may send as (stdlib only).

One file per attachment, written by the plugin's ADD before the pod's interface comes
up and removed by its DEL (or GC), in `<run dir>/<network>.ports/` beside the subnet
file (`/run/weft/weft.ports/` by default).  The run dir is a tmpfs: a record lives
exactly as long as the veth it describes, and a reboot takes both.

    <host veth>   JSON: {"port", "network", "containerID", "ifname", "addresses",
                         "mac", "validated", "podNamespace", "podName", "bridge"}

The records are the truth the kernel's source validation is compared with (weftd's
source-guard controller reads them at every reconcile and repairs the kernel from
them) and what names a pod in the denial journal.  `validated: false` marks a pod of
a network whose netconf says `allowSpoofing: true`: it has a record (so its name is
known) but no validation elements.

Locking: `locked()` takes an exclusive flock on the directory itself.  ADD and DEL
hold it while they write a record and change the kernel's elements; the controller
holds it while it compares and repairs, so it never sees one without the other.
"""

import errno
import ipaddress
import json
import os
import re
from collections import namedtuple

from ..digest import sha256
from ..fsutil import Flocked, is_temp_name, write_atomic

DIR_SUFFIX = ".ports"
NAME_MAX = 255  # bytes in one path component
LOCK_TIMEOUT = 30.0
_PORT = re.compile(r"^wft[0-9a-f]{12}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class PortRecordError(ValueError):
    """A record that does not parse; the message names the file and the field."""


def directory(run_dir: str, network: str) -> str:
    """<run dir>/<network>.ports; a name too long for one path component (CNI allows
    any length) is shortened with a digest of the whole name."""
    name = network
    if len(name) + len(DIR_SUFFIX) > NAME_MAX:
        digest = sha256(network.encode()).hexdigest()[:16]
        name = f"{network[:NAME_MAX - len(DIR_SUFFIX) - 17]}-{digest}"
    return os.path.join(run_dir, name + DIR_SUFFIX)


def directory_beside(subnet_file: str, network: str) -> str:
    """The records directory of the network whose subnet file is `subnet_file`."""
    return directory(os.path.dirname(subnet_file) or ".", network)


# a namedtuple, not a dataclass: `dataclasses` (and the `inspect` it imports) would
# cost every standalone ADD and DEL ~8 ms of import
_PORT_FIELDS = "port network container_id ifname addresses mac validated pod_namespace pod_name bridge pod_addresses"


class PortRecord(namedtuple("PortRecord", _PORT_FIELDS, defaults=(True, None, None, None, ()))):
    """port: the host veth (wft + 12 hex digits); addresses: ip_address objects, the
    pod's own; mac: lower case, the pod interface's; pod_addresses: the pod's addresses
    on its other weft interfaces (Multus): a multi-homed pod may answer from any of its
    own addresses through any of its interfaces."""

    __slots__ = ()

    @property
    def sources(self) -> tuple:
        """Every address this port may send from."""
        return self.addresses + tuple(a for a in self.pod_addresses if a not in self.addresses)

    @property
    def pod(self):
        """"namespace/name" of the pod (None when the runtime gave no K8S_POD_* args)."""
        if self.pod_namespace and self.pod_name:
            return f"{self.pod_namespace}/{self.pod_name}"
        return None

    def to_json(self) -> str:
        return json.dumps({"port": self.port, "network": self.network, "containerID": self.container_id,
                           "ifname": self.ifname, "addresses": [str(a) for a in self.addresses],
                           "mac": self.mac, "validated": self.validated, "podNamespace": self.pod_namespace,
                           "podName": self.pod_name, "bridge": self.bridge,
                           "podAddresses": [str(a) for a in self.pod_addresses]}, sort_keys=True)

    @classmethod
    def parse(cls, text: str, where: str) -> "PortRecord":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PortRecordError(f"port record {where} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise PortRecordError(f"port record {where} is not a JSON object")
        port = data.get("port")
        if not isinstance(port, str) or not _PORT.match(port):
            raise PortRecordError(f"port record {where}: port {port!r} is not a weft host veth name")
        mac = data.get("mac")
        if not isinstance(mac, str) or not _MAC.match(mac):
            raise PortRecordError(f"port record {where}: mac {mac!r} is not a lower-case MAC address")
        raw = data.get("addresses")
        if not isinstance(raw, list) or not raw:
            raise PortRecordError(f"port record {where}: addresses must be a non-empty list")
        try:
            addresses = tuple(ipaddress.ip_address(a) for a in raw if isinstance(a, str))
        except ValueError as exc:
            raise PortRecordError(f"port record {where}: {exc}") from None
        if len(addresses) != len(raw):
            raise PortRecordError(f"port record {where}: addresses must be strings")
        extra = data.get("podAddresses", [])
        try:
            if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
                raise ValueError("podAddresses must be a list of strings")
            pod_addresses = tuple(ipaddress.ip_address(a) for a in extra)
        except ValueError as exc:
            raise PortRecordError(f"port record {where}: {exc}") from None
        validated = data.get("validated", True)
        if not isinstance(validated, bool):
            raise PortRecordError(f"port record {where}: validated must be true or false")
        texts = {}
        for key in ("network", "containerID", "ifname", "podNamespace", "podName", "bridge"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise PortRecordError(f"port record {where}: {key} must be a string")
            texts[key] = value
        return cls(port=port, network=texts["network"] or "", container_id=texts["containerID"] or "",
                   ifname=texts["ifname"] or "", addresses=addresses, mac=mac, validated=validated,
                   pod_namespace=texts["podNamespace"], pod_name=texts["podName"], bridge=texts["bridge"],
                   pod_addresses=pod_addresses)


def locked(path: str, timeout: float = LOCK_TIMEOUT) -> Flocked:
    """The records directory `path` (made when missing), held exclusively by a with-block."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    return Flocked(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), True, timeout, path)


def write(path: str, record: PortRecord) -> None:
    """Replace the record of record.port (no fsync: /run does not outlive its veths)."""
    write_atomic(os.path.join(path, record.port), record.to_json(), durable=False, make_dirs=True)


def remove(path: str, port: str) -> bool:
    """Remove the record of `port`; False when there was none."""
    if not _PORT.match(port):
        raise ValueError(f"{port!r} is not a weft host veth name")
    try:
        os.unlink(os.path.join(path, port))
        return True
    except FileNotFoundError:
        return False


def read(path: str, port: str):
    """The record of `port`, or None."""
    try:
        with open(os.path.join(path, port), encoding="utf-8") as handle:
            return PortRecord.parse(handle.read(), os.path.join(path, port))
    except FileNotFoundError:
        return None


def read_all(path: str) -> tuple:
    """({port: PortRecord}, [problem text]) of every record in the directory; a missing
    directory holds none.  A file that does not parse is a problem, never a record."""
    try:
        names = os.listdir(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return {}, []
        return {}, [f"cannot read port records in {path}: {exc.strerror}"]
    records, problems = {}, []
    for name in sorted(names):
        if is_temp_name(name) or not _PORT.match(name):
            continue
        where = os.path.join(path, name)
        try:
            with open(where, encoding="utf-8") as handle:
                record = PortRecord.parse(handle.read(), where)
        except FileNotFoundError:
            continue  # removed since the listing
        except OSError as exc:
            problems.append(f"cannot read port record {where}: {exc.strerror}")
            continue
        except PortRecordError as exc:
            problems.append(str(exc))
            continue
        if record.port != name:
            problems.append(f"port record {where} names port {record.port}")
            continue
        records[name] = record
    return records, problems


# -- the pod's other attachments ----------------------------------------------------------
# <run dir>/weft-pods/<digest of containerID>/<digest of the records dir>:<port>, each
# file holding its records directory's name (a network name may be too long to repeat)
POD_INDEX = "weft-pods"


def pod_index(run_dir: str, container_id: str) -> str:
    return os.path.join(run_dir, POD_INDEX, sha256(container_id.encode()).hexdigest()[:24])


def _marker(records_dir: str, port: str) -> str:
    return f"{sha256(os.path.basename(records_dir).encode()).hexdigest()[:16]}:{port}"


def siblings(run_dir: str, container_id: str, port: str) -> list:
    """[(records directory, port)] of the pod's other attachments, from the pod index."""
    index = pod_index(run_dir, container_id)
    try:
        names = sorted(os.listdir(index))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        _, sep, other = name.rpartition(":")
        if not sep or not _PORT.match(other) or other == port:
            continue
        try:
            with open(os.path.join(index, name), encoding="utf-8") as handle:
                directory_name = handle.read().strip()
        except OSError:
            continue
        if directory_name.endswith(DIR_SUFFIX) and "/" not in directory_name:
            out.append((os.path.join(run_dir, directory_name), other))
    return out


def index_add(run_dir: str, container_id: str, records_dir: str, port: str) -> None:
    index = pod_index(run_dir, container_id)
    os.makedirs(index, mode=0o700, exist_ok=True)
    write_atomic(os.path.join(index, _marker(records_dir, port)), os.path.basename(records_dir), durable=False)


def index_remove(run_dir: str, container_id: str, records_dir: str, port: str) -> None:
    index = pod_index(run_dir, container_id)
    try:
        os.unlink(os.path.join(index, _marker(records_dir, port)))
        os.rmdir(index)  # the pod's last attachment
    except OSError:
        pass
