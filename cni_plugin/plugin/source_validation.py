"""The plugin's half of source validation: a port record and the kernel's elements per pod.

ADD: attach() writes the pod's port record (guard/ports.py) and, unless the network's
netconf says `allowSpoofing: true`, puts the port under validation
(datapath/source_guard.py) — both before the pod's interface comes up, under the
records lock so weftd's reconcile never sees one without the other.  DEL and a
rolled-back ADD: detach().  CHECK: check().  GC: forget_stale().  Standalone (no weftd
serving the call) the table is also brought into shape here, since no agent repairs it.
"""

import ipaddress
import os

from ..cni import invocation
from ..cni.errors import CHECK_FAILED, IO_FAILURE, CniError
from ..fsutil import LockTimeout
from ..guard import ports


def _standalone() -> bool:
    return invocation.current().via != "agent"


def _locked(cfg):
    return ports.locked(cfg.ports_dir, cfg.lock_timeout)


def record_of(cfg, env, host_name: str, mac: str, ips) -> ports.PortRecord:
    return ports.PortRecord(
        port=host_name, network=cfg.name, container_id=env.container_id, ifname=env.ifname,
        addresses=tuple(ipaddress.ip_interface(ip).ip for ip in ips), mac=mac.lower(),
        validated=not cfg.allow_spoofing, pod_namespace=env.args.get("K8S_POD_NAMESPACE") or None,
        pod_name=env.args.get("K8S_POD_NAME") or None, bridge=cfg.bridge)


def _port(record: ports.PortRecord):
    from ..datapath import source_guard

    return source_guard.Port(record.port, record.mac, record.addresses)


def attach(cfg, record: ports.PortRecord) -> None:
    from ..datapath import source_guard

    try:
        with _locked(cfg):
            ports.write(cfg.ports_dir, record)
            if record.validated and _standalone():
                # no agent repairs the table: bring it to what every record of the node says
                records, _ = ports.read_all(cfg.ports_dir)
                source_guard.ensure(cfg.name, [_port(r) for r in records.values() if r.validated])
            elif record.validated:
                source_guard.add_port(cfg.name, _port(record))
    except LockTimeout as exc:
        raise CniError(IO_FAILURE, f"port records of network {cfg.name}: {exc}") from None
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot write the port record of {record.port} in {cfg.ports_dir}: "
                       f"{exc.strerror}; the records live beside the subnet file (netconf subnetFile)") from None


def detach(cfg, host_name: str) -> None:
    """Take the port out of validation and forget its record; nothing to do when gone."""
    from ..datapath import source_guard

    if not os.path.isdir(cfg.ports_dir):
        return  # no ADD of this network ever wrote a record here
    try:
        with _locked(cfg):
            try:
                record = ports.read(cfg.ports_dir, host_name)
            except ports.PortRecordError:
                record = None  # unreadable: the agent's reconcile removes what no record wants
            if record is not None:
                source_guard.remove_port(cfg.name, _port(record))
            ports.remove(cfg.ports_dir, host_name)
    except LockTimeout as exc:
        raise CniError(IO_FAILURE, f"port records of network {cfg.name}: {exc}") from None
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot remove the port record of {host_name} in {cfg.ports_dir}: "
                       f"{exc.strerror}") from None


def check(cfg, host_name: str, mac: str, ips) -> None:
    """CHECK: the port is validated as the netconf says (allowSpoofing), with the
    addresses and MAC of prevResult."""
    from ..datapath import source_guard

    table = f"{source_guard.FAMILY} {source_guard.table_name(cfg.name)}"
    port = source_guard.Port(host_name, mac.lower(), tuple(ipaddress.ip_interface(ip).ip for ip in ips))
    if cfg.allow_spoofing:
        _, held = source_guard.port_state(cfg.name, host_name)
        if held:
            raise CniError(CHECK_FAILED, f"network {cfg.name} has allowSpoofing: true, but host veth {host_name} "
                           f"is still validated in {table}")
        return
    problems = source_guard.port_problems(cfg.name, port)
    if problems:
        raise CniError(CHECK_FAILED, f"source validation of host veth {host_name} is not in place "
                       f"(allowSpoofing is false): {'; '.join(problems)}")


def forget_stale(cfg, keep: set, busy) -> list:
    """GC: records (and elements) of ports not in `keep` that no call is working on.
    Returns the errors met (the sweep goes on)."""
    records, _ = ports.read_all(cfg.ports_dir)
    errors = []
    for name in sorted(records):
        if name in keep or busy(name):
            continue
        try:
            detach(cfg, name)
        except CniError as exc:
            errors.append(exc)
    return errors
