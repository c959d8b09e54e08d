"""The plugin's half of source validation: a port record and the kernel's elements per pod.

ADD: attach() writes the pod's port record (guard/ports.py) and, unless the network's
netconf says `allowSpoofing: true`, puts the port under validation
(datapath/source_guard.py) — both before the pod's interface comes up, under the
records lock so weftd's reconcile never sees one without the other.  DEL and a
rolled-back ADD: detach().  CHECK: check().  GC: forget_stale().  Standalone (no weftd
serving the call) nobody else repairs the table: each ADD checks its shape (rebuilding
it from the records when missing or damaged), and GC restores any element a recorded
pod lost.
"""

import ipaddress
import os

from ..cni import invocation
from ..cni.errors import CHECK_FAILED, IO_FAILURE, CniError
from ..datapath.errors import DatapathError
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

    return source_guard.Port(record.port, record.mac, record.sources)


# A pod with several weft interfaces (Multus) may answer from any of its own addresses
# through any of them (the kernel picks the route, not the interface the address is
# on): each port's record carries the pod's addresses on its other interfaces
# (podAddresses), found through the pod index beside the records directories.
def _others(cfg, record) -> list:
    """[(records directory, PortRecord)] of the pod's other attachments."""
    run_dir = os.path.dirname(cfg.ports_dir)
    out = []
    for directory, port in ports.siblings(run_dir, record.container_id, record.port):
        try:
            other = ports.read(directory, port)
        except ports.PortRecordError:
            other = None
        if other is not None and other.container_id == record.container_id:
            out.append((directory, other))
    return out


def _restate(cfg, directory: str, port: str, change) -> None:
    """Rewrite another attachment's record with change(record) (its podAddresses) and
    its elements to match, under its directory's lock (ours is held already)."""
    from contextlib import nullcontext

    from ..datapath import source_guard

    with (nullcontext() if directory == cfg.ports_dir else ports.locked(directory, cfg.lock_timeout)):
        other = ports.read(directory, port)
        if other is None:
            return
        new = change(other)
        ports.write(directory, new)
        if other.validated:
            added = [a for a in new.sources if a not in other.sources]
            gone = [a for a in other.sources if a not in new.sources]
            if added:
                source_guard.add_port(other.network, source_guard.Port(other.port, other.mac, tuple(added)))
            if gone:
                source_guard.remove_addresses(other.network, other.port, gone)


def attach(cfg, record: ports.PortRecord) -> None:
    from ..datapath import source_guard

    try:
        with _locked(cfg):
            others = _others(cfg, record)
            extra = tuple(a for _, o in others for a in o.addresses if a not in record.addresses)
            record = record._replace(pod_addresses=tuple(dict.fromkeys(extra)))
            ports.write(cfg.ports_dir, record)
            ports.index_add(os.path.dirname(cfg.ports_dir), record.container_id, cfg.ports_dir, record.port)
            for directory, other in others:
                _restate(cfg, directory, other.port, lambda o: o._replace(
                    pod_addresses=tuple(dict.fromkeys(o.pod_addresses + record.addresses))))
            if record.validated and _standalone():
                # no agent repairs the table: its shape is checked (listed without the
                # elements, so the check does not grow with the pods) and a missing or
                # damaged table is made again from every record of the node; elements
                # another pod lost are named by its CHECK and restored by a standalone GC
                if not source_guard.ensure(cfg.name, rebuild_with=lambda: _validated_ports(cfg)).changed:
                    source_guard.add_port(cfg.name, _port(record))
            elif record.validated:
                source_guard.add_port(cfg.name, _port(record))
    except LockTimeout as exc:
        raise CniError(IO_FAILURE, f"port records of network {cfg.name}: {exc}") from None
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot write the port record of {record.port} in {cfg.ports_dir}: "
                       f"{exc.strerror}; the records live beside the subnet file (netconf subnetFile)") from None


def _validated_ports(cfg) -> list:
    """source_guard.Port of every validated record of the network (its lock held)."""
    records, _ = ports.read_all(cfg.ports_dir)
    return [_port(r) for r in records.values() if r.validated]


def repair_elements(cfg) -> None:
    """Standalone GC: the table made to hold exactly the elements the node's records
    say (a standalone ADD checks only the table's shape; with weftd, its reconcile does
    this).  Nothing to do for a network no ADD has recorded a port of."""
    from ..datapath import source_guard

    if not os.path.isdir(cfg.ports_dir):
        return
    try:
        with _locked(cfg):
            wanted = _validated_ports(cfg)
            if wanted:
                source_guard.ensure(cfg.name, wanted)
    except LockTimeout as exc:
        raise CniError(IO_FAILURE, f"port records of network {cfg.name}: {exc}") from None


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
            refused = None
            if record is not None:
                try:
                    source_guard.remove_port(cfg.name, _port(record))
                except source_guard.NftError as exc:
                    # the record goes anyway (the port is being torn down), and the error
                    # is still the caller's: what the table keeps, the next repair (the
                    # agent's, or a standalone ADD's ensure) removes, since no record wants it
                    refused = exc
                for directory, other in _others(cfg, record):
                    _restate(cfg, directory, other.port, lambda o: o._replace(
                        pod_addresses=tuple(a for a in o.pod_addresses if a not in record.addresses)))
                ports.index_remove(os.path.dirname(cfg.ports_dir), record.container_id, cfg.ports_dir, host_name)
            ports.remove(cfg.ports_dir, host_name)
        if refused is not None:
            raise refused
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
    own = tuple(ipaddress.ip_interface(ip).ip for ip in ips)
    try:
        record = ports.read(cfg.ports_dir, host_name)
    except ports.PortRecordError:
        record = None
    extra = tuple(a for a in record.pod_addresses if a not in own) if record is not None else ()
    port = source_guard.Port(host_name, mac.lower(), own + extra)
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
    """GC: records (and elements) of ports not in `keep` that no call is working on;
    standalone, then the elements of the rest repaired (repair_elements).  Returns the
    errors met (the sweep goes on)."""
    records, _ = ports.read_all(cfg.ports_dir)
    errors = []
    for name in sorted(records):
        if name in keep or busy(name):
            continue
        try:
            detach(cfg, name)
        except (CniError, DatapathError) as exc:
            errors.append(exc)
    if _standalone():
        try:
            repair_elements(cfg)
        except (CniError, DatapathError) as exc:
            errors.append(exc)
    return errors
