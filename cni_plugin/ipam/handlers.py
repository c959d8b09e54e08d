"""weft-ipam's CNI commands: fn(CniEnv, conf) -> result dict (ADD) or None.

Error codes: 7 bad configuration or request, 100 a range set is full, 101 a requested
address is held by someone else, 102 the attachment already holds different addresses,
104 CHECK found no matching allocation, 50 the store is unusable, 5 any other I/O error.
"""

import ipaddress
import json

from ..cni.errors import (
    ADDRESS_UNAVAILABLE,
    ATTACHMENT_EXISTS,
    CHECK_FAILED,
    INVALID_NETCONF,
    IO_FAILURE,
    NOT_AVAILABLE,
    RANGE_EXHAUSTED,
    CniError,
)
from ..cni import caller, netconf
from ..cni.errors import TRY_AGAIN_LATER
from ..fsutil import LockTimeout
from . import allocator, config, history
from .store import Attachment, Store, usability_problem

NO_POD = (None, None)  # GC does not know which pod an attachment belonged to


# --- shared helpers ---------------------------------------------------------


def _attachment(env) -> Attachment:
    return Attachment(env.container_id, env.ifname)


def _pod(env) -> tuple:
    return env.args.get("K8S_POD_NAMESPACE"), env.args.get("K8S_POD_NAME"), env.args.get("K8S_POD_UID")


class _io_errors:
    """A with-block reporting an OSError from the store as CNI error 5 naming the store
    (11 for a lock that stayed taken: another call is stuck, retry).  A class rather
    than contextlib.contextmanager, whose import costs a standalone call ~1 ms."""

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is not None and issubclass(kind, LockTimeout):
            if caller.gone():
                raise caller.CallerLeft(f"while waiting for IPAM store {self.store.dir}")
            raise CniError(TRY_AGAIN_LATER, f"IPAM store {self.store.dir}: {exc}; retry later")
        if kind is not None and issubclass(kind, OSError):
            raise CniError(IO_FAILURE, f"IPAM store {self.store.dir} failed: {exc}")
        return False


def _records(event, ips, store, attachment, pod, reason=None) -> list[dict]:
    return [
        history.entry(event, ip, store.network, attachment.container_id, attachment.ifname,
                      pod, reason)
        for ip in ips
    ]


def _release(store: Store, attachment: Attachment, ips, pod, reason: str) -> None:
    """Free the attachment's addresses and its index; history first, so no release is
    lost.  A history that cannot be written (full or read-only disk) keeps them: an
    address freed without a record would show two holders in `weftctl whois`; the error
    (code 5) tells the runtime to retry DEL, which finishes once the disk is usable."""
    try:
        history.append(store.history_path, _records(history.RELEASE, ips, store, attachment, pod, reason))
    except OSError as exc:
        raise CniError(IO_FAILURE, f"IPAM store {store.dir}: cannot record the release of "
                       f"{', '.join(map(str, ips)) or 'nothing'} for {attachment} in {store.history_path} "
                       f"({exc.strerror}); the addresses stay reserved until DEL is retried")
    problems = []
    for ip in ips:
        try:
            store.release(ip, attachment)
        except OSError as exc:
            problems.append(f"cannot free {ip}: {exc}")
    try:
        store.remove_index(attachment)
    except OSError as exc:
        problems.append(f"cannot remove the index of {attachment}: {exc}")
    if problems:
        raise CniError(IO_FAILURE, f"IPAM store {store.dir}: " + "; ".join(problems))


# --- requested addresses ----------------------------------------------------


def _string_list(section: dict, where: str) -> list[tuple[str, str]]:
    values = netconf.typed(section, "ips", list, where, [])
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise CniError(INVALID_NETCONF, f"{where}ips[{i}] must be a string, got {json.dumps(value)}")
    return [(f"{where}ips[{i}]", v) for i, v in enumerate(values)]


def _requested_texts(env, conf) -> list[tuple[str, str]]:
    """(where, text) of every requested address: CNI_ARGS IP, args.cni.ips, runtimeConfig.ips."""
    from_env = [("CNI_ARGS IP", t.strip()) for t in env.args.get("IP", "").split(",") if t.strip()]
    return (
        from_env
        + _string_list(netconf.cni_args(conf), "args.cni.")
        + _string_list(netconf.runtime_config(conf), "runtimeConfig.")
    )


def _parse_requested(where: str, text: str):
    """'IP' or 'IP/prefix' -> (ip, prefix or None)."""
    try:
        if "/" in text:
            iface = ipaddress.ip_interface(text)
            return iface.ip, iface.network.prefixlen
        return ipaddress.ip_address(text), None
    except ValueError:
        raise CniError(INVALID_NETCONF, f"{where} {json.dumps(text)} is not a valid IP address")


def requested_ips(env, conf, cfg) -> dict:
    """{range set index: (AddressRange, ip)} of the addresses this ADD asks for."""
    chosen = {}
    for where, text in _requested_texts(env, conf):
        ip, prefix = _parse_requested(where, text)
        range_set, r = allocator.locate(cfg.range_sets, ip)
        if prefix is not None and prefix != r.subnet.prefixlen:
            raise CniError(
                INVALID_NETCONF,
                f"{where} {json.dumps(text)} has prefix /{prefix} but its subnet is {r.subnet}",
            )
        earlier = chosen.get(range_set.index)
        if earlier is not None and earlier[1] != ip:
            raise CniError(
                INVALID_NETCONF,
                f"requested IPs {earlier[1]} and {ip} both fall in {range_set.describe()}; "
                "request at most one address per range set",
            )
        chosen[range_set.index] = (r, ip)
    return chosen


# --- ADD --------------------------------------------------------------------


def _held_by_other(store: Store, ip, network: str) -> CniError:
    holder = store.holder(ip)
    return CniError(
        ADDRESS_UNAVAILABLE,
        f"requested IP {ip} is already allocated to {holder} on network {network}",
    )


def _choose(store: Store, cfg, requested: dict) -> list[tuple]:
    """One (AddressRange, ip) per range set; CniError 101 or 100 when impossible."""
    chosen, full = [], []
    for range_set in cfg.range_sets:
        if range_set.index in requested:
            r, ip = requested[range_set.index]
            if store.is_taken(ip):
                raise _held_by_other(store, ip, cfg.network)
            chosen.append((r, ip))
            continue
        ip = allocator.first_free(range_set, store.is_taken, store.last_reserved(range_set.index))
        if ip is None:
            full.append(range_set)
        else:
            chosen.append((range_set.range_of(ip), ip))
    if full:
        raise CniError(
            RANGE_EXHAUSTED,
            "; ".join(f"no free address in {s.describe()}" for s in full)
            + f" on network {cfg.network}",
        )
    return chosen


def _allocate(store: Store, cfg, attachment: Attachment, requested: dict, pod) -> list[tuple]:
    """Take fresh addresses: index, address files, then the history's "allocate" (an
    allocation is recorded once it took effect); undo everything on failure (a full
    disk included: the reservation never outlives a failed ADD)."""
    chosen = _choose(store, cfg, requested)
    ips = [ip for _, ip in chosen]
    taken, recorded = [], False
    try:
        store.write_index(attachment, ips)
        for ip in ips:
            if not store.reserve(ip, attachment):
                raise _held_by_other(store, ip, cfg.network)
            taken.append(ip)
        history.append(store.history_path, _records(history.ALLOCATE, ips, store, attachment, pod))
        recorded = True
        caller.check("before IPAM ADD committed")
    except BaseException:
        _rollback(store, attachment, ips if recorded else [], taken, pod)
        raise
    for range_set, ip in zip(cfg.range_sets, ips):
        try:
            store.set_last_reserved(range_set.index, ip)
        except OSError:
            pass  # a hint (see Store.set_last_reserved): never fails an ADD
    return chosen


def _rollback(store: Store, attachment: Attachment, recorded, taken, pod) -> None:
    """Best effort: free what this call took; the original error is what gets reported.
    recorded: the addresses whose "allocate" made it into the history.  Their release
    is recorded first; if it cannot be, the reservation stays (like a DEL's, see
    _release) for the runtime's DEL, rather than an address freed without a record."""
    try:
        history.append(store.history_path,
                       _records(history.RELEASE, recorded, store, attachment, pod, "rollback"))
    except OSError:
        return
    for ip in taken:
        try:
            store.release(ip, attachment)
        except OSError:
            pass
    try:
        store.remove_index(attachment)
    except OSError:
        pass


def _one_per_range_set(cfg, ips) -> list[tuple] | None:
    """[(AddressRange, ip)] in range-set order if ips hold exactly one address per set."""
    by_set = {}
    for ip in ips:
        for range_set in cfg.range_sets:
            r = range_set.range_of(ip)
            if r is not None and range_set.index not in by_set:
                by_set[range_set.index] = (r, ip)
                break
        else:
            return None
    if len(by_set) != len(cfg.range_sets) or len(ips) != len(by_set):
        return None
    return [by_set[s.index] for s in cfg.range_sets]


def _existing(store: Store, cfg, attachment: Attachment, requested: dict, pod):
    """The attachment's current allocation if still valid; stale leftovers are freed."""
    listed = store.indexed_ips(attachment)
    if listed is None:
        return None
    current = _one_per_range_set(cfg, listed)
    if current is None or not all(_still_held(store, ip, attachment) for ip in listed):
        _release(store, attachment, listed, pod, "rollback")  # config changed or crash debris
        return None
    for index, (_, ip) in requested.items():
        if current[index][1] != ip:
            raise CniError(
                ATTACHMENT_EXISTS,
                f"{attachment} already holds {current[index][1]} on network {cfg.network}, "
                f"not the requested {ip}; DEL the attachment first",
            )
    return current


def _still_held(store: Store, ip, attachment: Attachment) -> bool:
    """True if the address file names attachment, re-creating it if a crash lost it."""
    holder = store.holder(ip)
    if holder is None:
        return store.reserve(ip, attachment)
    return holder == attachment


def _result(cfg, allocation: list[tuple], dns: dict) -> dict:
    return {
        "interfaces": [],
        "ips": [{"address": r.interface(ip), "gateway": str(r.gateway)} for r, ip in allocation],
        "routes": [dict(route) for route in cfg.routes],
        "dns": dns,
    }


def cmd_add(env, conf) -> dict:
    """One address per range set for (CNI_CONTAINERID, CNI_IFNAME).

    Idempotent: ADD for an attachment that already holds a valid allocation returns the
    same addresses (error 102 if a requested address differs from what it holds).
    """
    cfg = config.load(conf)
    requested = requested_ips(env, conf, cfg)
    dns = config.load_dns(cfg.resolv_conf)
    attachment, pod = _attachment(env), _pod(env)
    store = Store(cfg.data_dir, cfg.network)
    with _io_errors(store), store.locked(abandoned=caller.gone):
        store.remove_temp_files()  # a killed writer's debris goes with the next call
        allocation = _existing(store, cfg, attachment, requested, pod)
        if allocation is None:
            allocation = _allocate(store, cfg, attachment, requested, pod)
    return _result(cfg, allocation, dns)


# --- DEL, CHECK, GC, STATUS -------------------------------------------------


def cmd_del(env, conf) -> None:
    """Free the attachment's addresses; reads only its index (no directory walk).

    Idempotent: an unknown attachment, or a network with no store, succeeds silently.
    """
    cfg = config.load(conf, need_ranges=False)
    store = Store(cfg.data_dir, cfg.network)
    if not store.exists():
        return None
    attachment = _attachment(env)
    with _io_errors(store), store.locked():
        listed = store.indexed_ips(attachment)
        if listed is not None:
            _release(store, attachment, listed, _pod(env), "del")
    return None


def _check_failed(msg: str) -> CniError:
    return CniError(CHECK_FAILED, msg)


def cmd_check(env, conf) -> None:
    """The attachment has an allocation on this network and every address file names it."""
    cfg = config.load(conf, need_ranges=False)
    store = Store(cfg.data_dir, cfg.network)
    attachment = _attachment(env)
    missing = _check_failed(f"{attachment} has no IP allocation on network {cfg.network}")
    if not store.exists():
        raise missing
    with _io_errors(store), store.locked(exclusive=False):
        listed = store.indexed_ips(attachment)
        if not listed:
            raise missing
        for ip in listed:
            holder = store.holder(ip)
            if holder != attachment:
                state = "is not allocated" if holder is None else f"is held by {holder}"
                raise _check_failed(
                    f"IP {ip} of {attachment} {state} on network {cfg.network}"
                )
    return None


def _valid_attachments(conf) -> set[Attachment]:
    return {Attachment(container_id, ifname) for container_id, ifname in netconf.valid_attachments(conf)}


def _adopt(store: Store, listed: dict, holder: Attachment, ip) -> None:
    """Add an address file without index entry (e.g. host-local state) to its holder's index."""
    if ip in listed.setdefault(holder, []) or not holder.indexable:
        return
    listed[holder].append(ip)
    store.write_index(holder, listed[holder])


def _collect_garbage(store: Store, valid: set[Attachment]) -> None:
    """Free what belongs to no valid attachment; every item is tried, whatever failed
    before it, and the failures are reported together (code 5)."""
    listed, problems = {}, []

    def attempt(step, *args):
        try:
            step(*args)
        except (OSError, CniError) as exc:
            problems.append(getattr(exc, "msg", None) or str(exc))

    for attachment in store.indexed_attachments():
        ips = store.indexed_ips(attachment) or []
        if attachment in valid:
            listed[attachment] = ips
        else:
            attempt(_release, store, attachment, ips, NO_POD, "gc")
    for ip in store.ip_files():
        holder = store.holder(ip)
        if holder is None:
            continue
        if holder in valid:
            attempt(_adopt, store, listed, holder, ip)
            continue
        try:  # history first, as in _release: no address is freed without a record
            history.append(store.history_path, _records(history.RELEASE, [ip], store, holder, NO_POD, "gc"))
        except OSError as exc:
            problems.append(f"{ip} of {holder} stays reserved: cannot record its release ({exc})")
            continue
        attempt(store.remove_ip_file, ip)
    attempt(store.remove_temp_files)
    if problems:
        raise CniError(IO_FAILURE, f"GC of IPAM store {store.dir} left work undone: " + "; ".join(problems))


def cmd_gc(env, conf) -> None:
    """Free every allocation of this network whose attachment is not in the valid list."""
    cfg = config.load(conf, need_ranges=False)
    valid = _valid_attachments(conf)
    store = Store(cfg.data_dir, cfg.network)
    if not store.exists():
        return None
    with _io_errors(store), store.locked():
        _collect_garbage(store, valid)
    return None


def cmd_status(env, conf) -> None:
    """Error 50 unless the store directory is usable or can be created; creates nothing."""
    cfg = config.load(conf, need_ranges=False)
    problem = usability_problem(cfg.store_dir)
    if problem is not None:
        raise CniError(NOT_AVAILABLE, f"IPAM store {cfg.store_dir} is not usable: {problem}")
    return None


HANDLERS = {
    "ADD": cmd_add,
    "DEL": cmd_del,
    "CHECK": cmd_check,
    "GC": cmd_gc,
    "STATUS": cmd_status,
}
