"""weft's CNI commands: IPAM delegate + datapath, with rollback on failure.

Handlers take (CniEnv, conf) as cni.dispatch calls them.  Kernel work lives in
cni_plugin.datapath (imported lazily, so VERSION and STATUS never load pyroute2);
its errors become CNI codes in plugin/errors.py.
"""

import ipaddress
import time

from ..cni import invocation, log
from ..cni import result as cni_result
from ..cni.errors import (ATTACHMENT_EXISTS, CHECK_FAILED, DELEGATE_FAILED, INTERNAL, INVALID_NETCONF,
                          IO_FAILURE, NOT_AVAILABLE_LIMITED, TRY_AGAIN_LATER, CniError)
from ..cni.netconf import valid_attachments
from ..datapath.mac import random_mac
from ..datapath.naming import HOST_VETH_PREFIX, host_veth_name
from ..cni import caller
from . import config as plugin_config
from . import delegate, source_validation, teardown
from . import lock as attachment_lock
from ..datapath.errors import DatapathError
from .errors import as_cni_error, speaks_cni


def _attachment(env) -> str:
    return f"{env.container_id}/{env.ifname}"


def _gateway_of(ip_entry: dict):
    iface = ipaddress.ip_interface(ip_entry["address"])
    if ip_entry.get("gateway"):
        return ipaddress.ip_address(ip_entry["gateway"])
    return next(iface.network.hosts())


def _container_routes(cfg, ipam: dict) -> list:
    """[(network, gateway)] for the container: IPAM routes, then default routes."""
    gateways = {}
    for entry in ipam["ips"]:
        gateways.setdefault(ipaddress.ip_interface(entry["address"]).version, _gateway_of(entry))
    routes = []
    for route in ipam["routes"]:
        dst = ipaddress.ip_network(route["dst"])
        gw = ipaddress.ip_address(route["gw"]) if route.get("gw") else gateways.get(dst.version)
        routes.append((dst, gw))
    if cfg.is_default_gateway:
        for version, gw in sorted(gateways.items()):
            default = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
            if not any(dst == default for dst, _ in routes):
                routes.append((default, gw))
    return routes


def _ensure_masquerade(cfg, ips: list) -> None:
    """Node-wide masquerade (datapath/masq.py).  When the serving weftd owns the
    network's table there is nothing to do per pod; standalone, the pod's subnet is
    made part of the table (one listing once it is)."""
    if not cfg.ip_masq or invocation.current().agent_masquerades(cfg.name):
        return
    from ..datapath import masq

    masq.ensure(masq.Masquerade(cfg.name, tuple(ip.network for ip in ips if ip.version in cfg.ip_masq_families),
                                tuple([ip.network for ip in ips] + list(cfg.cluster_networks))), exact=False)


def _policy_fast_path(cfg, env, ips: list) -> None:
    if invocation.current().via != "agent":
        _refuse_unpoliced(cfg)
        return
    try:
        invocation.current().agent_attaching(cfg.name, [ip.ip for ip in ips], env.args.get("K8S_POD_NAMESPACE"),
                                             env.args.get("K8S_POD_NAME"))
    except CniError:
        raise
    except Exception as exc:  # fail closed: a pod the policy cannot cover is not added
        raise CniError(TRY_AGAIN_LATER, f"weftd could not put the pod into network {cfg.name}'s "
                       f"NetworkPolicy sets: {exc}") from None


def _refuse_unpoliced(cfg) -> None:
    """Standalone (no weftd serving the call): when this node enforces a NetworkPolicy for
    the network, nobody can put the new pod into the policy's sets before it gets an
    address, so it is not added (fail closed; the runtime retries until weftd is back).
    A node whose table holds no policy isolates nobody: the pod is added."""
    from ..datapath import nft
    from ..policy.names import table_name

    table = table_name(cfg.name)
    if len(table) > nft.NAME_MAX:
        return  # nftables refuses such a name: no table of it can exist
    objects = nft.list_table("inet", table, elements=False) or []  # chains are all it asks about
    base = {"egress_hook", "ingress_hook", "egress", "ingress"}
    # a chain of its own per NetworkPolicy: with none, no pod can be isolated
    if any("chain" in item and item["chain"].get("name") not in base for item in objects):
        raise CniError(TRY_AGAIN_LATER, f"network {cfg.name} enforces NetworkPolicy on this node (nftables "
                       f"table inet {table} has policies) but weftd is not serving this call, so the new pod could not "
                       "be put into its policy sets; start weftd (the runtime retries)")


def _pod_netns(env):
    """CNI_NETNS for the datapath: its path, and the descriptor weft's forwarder handed
    the serving weftd, if any (then only the descriptor is opened)."""
    from ..datapath import netns

    return netns.PodNetns(env.netns, invocation.current().netns_fd)


def _setup(cfg, env, mac: str, ipam: dict, rt) -> dict:
    from ..datapath import container, links, netns, sysctl

    lap = invocation.current().lap
    ips = [ipaddress.ip_interface(entry["address"]) for entry in ipam["ips"]]
    _policy_fast_path(cfg, env, ips)  # the serving agent's sets hold the pod before it has an interface
    lap("policy")
    bridge = _bridge(cfg, rt, ipam, ips)
    lap("bridge")
    host_name = host_veth_name(env.container_id, env.ifname)
    host = links.create_veth(rt, host_name, _pod_netns(env), env.ifname, cfg.mtu)
    sysctl.set_interface("ipv6", host_name, "accept_ra", "0")
    links.attach_to_bridge(rt, host.index, bridge.index, cfg.hairpin_mode)
    lap("veth")
    routes = _container_routes(cfg, ipam)
    # the pod may send only as itself from its first frame: validation before it is up.
    # Its MAC is chosen here (random unless requested) so that no read is needed to know it.
    mac = mac or random_mac()
    source_validation.attach(cfg, source_validation.record_of(cfg, env, host_name, mac, ips))
    lap("validation")
    with netns.open_container(_pod_netns(env)) as crt:
        inside = container.configure(crt, env.ifname, mac, ips, routes)
    lap("container")
    _ensure_masquerade(cfg, ips)
    lap("masquerade")
    return _result(cfg, env, ipam, routes, inside, [(cfg.bridge, bridge.address), (host_name, host.address)])


def _bridge(cfg, rt, ipam: dict, ips: list):
    """The bridge, up with the netconf's MTU and the gateway addresses.  Served by weftd,
    a bridge its ADDs found so, and that no notification says changed since, is not
    read again (datapath/bridge_facts.py); the sysctls, which send no notification,
    are set every time."""
    from ..datapath import links, sysctl

    gateways = tuple((_gateway_of(entry), ip.network) for entry, ip in zip(ipam["ips"], ips)) if cfg.is_gateway else ()
    facts = invocation.current().bridges
    key = (cfg.bridge, cfg.mtu, cfg.force_address, gateways)
    bridge, token = facts.known(key) if facts is not None else (None, None)
    found = bridge is not None
    checked_at = time.monotonic()
    if not found:
        bridge = links.ensure_bridge(rt, cfg.bridge, cfg.mtu)
    sysctl.set_interface("ipv6", cfg.bridge, "accept_ra", "0")
    if cfg.is_gateway:
        if not found:
            for gateway, network in gateways:
                links.ensure_gateway_address(rt, cfg.bridge, bridge.index, gateway, network, cfg.force_address)
        sysctl.enable_forwarding({ip.version for ip in ips})
    if not found and facts is not None:
        facts.record(key, bridge, token, checked_at)
    return bridge


def _result(cfg, env, ipam: dict, routes: list, inside: dict, host_links: list) -> dict:
    prev = cni_result.normalize(cfg.prev_result) if cfg.prev_result else cni_result.empty()
    out = cni_result.empty()
    out["interfaces"] = list(prev["interfaces"])
    out["interfaces"] += [{"name": name, "mac": mac} for name, mac in host_links]
    out["interfaces"].append({"name": env.ifname, "mac": inside["mac"], "sandbox": env.netns,
                              "mtu": inside["mtu"]})
    container_index = len(out["interfaces"]) - 1
    out["ips"] = list(prev["ips"])
    for entry in ipam["ips"]:
        out["ips"].append({"address": entry["address"], "gateway": str(_gateway_of(entry)),
                           "interface": container_index})
    out["routes"] = list(prev["routes"])
    for dst, gw in routes:
        out["routes"].append({"dst": str(dst), **({"gw": str(gw)} if gw else {})})
    out["dns"] = ipam.get("dns") or prev.get("dns") or {}
    return out


def _release(cfg, env, errors: list) -> None:
    try:
        delegate.run(cfg.ipam_type, "DEL", env, cfg.delegate_conf)
    except CniError as exc:
        errors.append(exc)


def cmd_add(env, conf):
    from ..datapath import netns

    cfg = plugin_config.load(conf, "ADD")
    mac = plugin_config.requested_mac(cfg, env)
    netns.check_container_netns(_pod_netns(env))
    host_name = host_veth_name(env.container_id, env.ifname)
    with attachment_lock.attachment(cfg.data_dir, host_name, "ADD", cfg.lock_timeout) as held, \
            netns.open_node() as rt:
        caller.check("before ADD started")
        teardown.finish_pending(cfg.data_dir, host_name)  # a DEL of this attachment not yet torn down
        if rt.link(host_name) is not None:
            if held.state() != attachment_lock.ADDING:
                raise CniError(ATTACHMENT_EXISTS, f"attachment {_attachment(env)} already exists (host "
                               f"veth {host_name}); the runtime must DEL it before adding it again")
            _delete(cfg, env, host_name)  # an ADD that died mid-way (weftd killed): its debris
        try:
            _mark(held, attachment_lock.ADDING)
            invocation.current().lap("config")
            ipam = delegate.run(cfg.ipam_type, "ADD", env, cfg.delegate_conf)
            invocation.current().lap("ipam")
        except BaseException:
            held.remove = True  # nothing of ours exists (weft-ipam undoes its own failures)
            raise
        # from here on everything is this call's own: under the lock nobody else can
        # have made the veth or the reservation the rollback removes
        try:
            if not ipam["ips"]:
                raise CniError(DELEGATE_FAILED, f"IPAM plugin {cfg.ipam_type} returned no IP address")
            result = _setup(cfg, env, mac, ipam, rt)
            caller.check("before ADD committed")  # a DEL may be queued behind us: never finish
            _mark(held, attachment_lock.ADDED)
            return result
        except BaseException:
            _rollback(cfg, env, rt, host_name)
            held.remove = True
            raise


def _mark(held, stage: str) -> None:
    try:
        held.mark(stage)
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot record the attachment's stage in {held.path}: {exc.strerror}")


def _rollback(cfg, env, rt, host_name: str) -> None:
    """Undo a failed ADD: links, the IP allocation (masquerade is node-wide: nothing of
    the pod's is in it).  Every step is tried; a step that fails is written to the log
    file (the runtime sees the ADD's own error, and the operator finds what may be
    left behind)."""
    from ..datapath import links

    steps = (("delete host veth " + host_name, lambda: links.delete(rt, host_name)),
             ("take the port out of source validation", lambda: source_validation.detach(cfg, host_name)),
             (f"release the IP via {cfg.ipam_type} DEL",
              lambda: delegate.run(cfg.ipam_type, "DEL", env, cfg.delegate_conf)))
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # keep undoing
            log.record(cfg.log_file, {"command": "ADD", "containerID": env.container_id,
                                      "ifname": env.ifname, "rollback": what, "rollbackError": str(exc)})


def cmd_del(env, conf):
    """Served by weftd: the pod is cut off under the lock and the rest is queued
    (plugin/teardown.py); standalone, or with the queue full, all of it happens here."""
    lap = invocation.current().lap
    cfg = plugin_config.load(conf, "DEL")
    lap("config")
    host_name = host_veth_name(env.container_id, env.ifname)
    queue = invocation.current().teardown
    if queue is not None and teardown.read(cfg.data_dir, host_name) is not None \
            and queue.submit(cfg.data_dir, host_name, cfg.lock_timeout):
        # cut off by an earlier DEL (containerd's RemovePodSandbox repeats StopPodSandbox's):
        # the same answer at once, without waiting for the lock its teardown may hold
        return
    with attachment_lock.attachment(cfg.data_dir, host_name, "DEL", cfg.lock_timeout) as held:
        # the lock file (and the ADD stage it records) goes only once the DEL succeeded
        if teardown.read(cfg.data_dir, host_name) is None:
            if queue is None or not teardown.cut_off(cfg, env, conf, host_name):
                _delete(cfg, env, host_name)
                held.remove = True
                return
            lap("cut-off")
        # this DEL's teardown, or an earlier one's (DEL again, or after an agent kill)
        if queue is None or not queue.submit(cfg.data_dir, host_name, cfg.lock_timeout):
            teardown.finish_pending(cfg.data_dir, host_name)
            lap("teardown")
        held.remove = True


def _delete(cfg, env, host_name: str) -> None:
    """Every step is tried whatever the others did; the errors are reported together."""
    from ..datapath import links, netns

    lap = invocation.current().lap
    errors = []
    pod = _pod_netns(env)
    if env.netns and netns.netns_exists(pod):
        try:
            with netns.open_container(pod) as crt:
                links.delete(crt, env.ifname)  # takes the host end with it
        except Exception as exc:
            errors.append(exc)
    lap("container")
    try:
        with netns.open_node() as rt:
            links.delete(rt, host_name)
    except Exception as exc:
        errors.append(exc)
    lap("host-veth")  # masquerade is node-wide (datapath/masq.py): nothing of the pod's there
    try:  # before the address is released: nothing validated as this pod stays behind
        source_validation.detach(cfg, host_name)
    except Exception as exc:
        errors.append(exc)
    lap("validation")
    try:  # before the release: the next holder of an address inherits none of its connections
        teardown.disconnect(cfg, env)
    except Exception as exc:
        errors.append(exc)
    lap("conntrack")
    _release(cfg, env, errors)
    lap("ipam")
    _raise_first(errors)


def _raise_first(errors: list) -> None:
    if not errors:
        return
    errors = [_known(e) for e in errors]
    first = errors[0]
    if len(errors) > 1:
        first = CniError(first.code, "; ".join(getattr(e, "msg", str(e)) for e in errors), first.details)
    raise first


def _prev_attachment(cfg, env):
    """From prevResult: the container interface, its ips and the routes."""
    if not cfg.prev_result:
        raise CniError(INVALID_NETCONF, "CHECK needs prevResult in the network configuration")
    prev = cni_result.normalize(cfg.prev_result)
    for index, iface in enumerate(prev["interfaces"]):
        if iface.get("name") == env.ifname and iface.get("sandbox"):
            ips = [ipaddress.ip_interface(ip["address"]) for ip in prev["ips"]
                   if ip.get("interface") == index]
            return iface, ips, prev
    raise CniError(INVALID_NETCONF, f"prevResult has no interface {env.ifname} in a sandbox")


def cmd_check(env, conf):
    from ..datapath import netns

    cfg = plugin_config.load(conf, "CHECK")
    iface, ips, prev = _prev_attachment(cfg, env)
    netns.check_container_netns(_pod_netns(env))
    host_name = host_veth_name(env.container_id, env.ifname)
    with attachment_lock.attachment(cfg.data_dir, host_name, "CHECK", cfg.lock_timeout):
        _check(cfg, env, iface, ips, prev, host_name)


def _check(cfg, env, iface, ips, prev, host_name: str) -> None:
    from ..datapath import container, netns

    delegate.run(cfg.ipam_type, "CHECK", env, cfg.delegate_conf)
    routes = []
    for route in prev["routes"]:
        dst = ipaddress.ip_network(route["dst"])
        routes.append((dst, ipaddress.ip_address(route["gw"]) if route.get("gw") else None))
    gateways = {ip.version: None for ip in ips}
    for entry in prev["ips"]:
        if entry.get("gateway"):
            gateways[ipaddress.ip_interface(entry["address"]).version] = ipaddress.ip_address(entry["gateway"])
    # routes that named no gateway were installed via the family's gateway
    routes = [(dst, gw if gw is not None else gateways.get(dst.version)) for dst, gw in routes
              if dst.version in gateways]
    with netns.open_container(_pod_netns(env)) as crt:
        container.verify(crt, env.ifname, iface.get("mac", ""), ips, routes, cfg.mtu)
        mac = iface.get("mac") or container.current_mac(crt, env.ifname)
    with netns.open_node() as rt:
        bridge = rt.link(cfg.bridge)
        host = rt.link(host_name)
    if bridge is None:
        raise CniError(CHECK_FAILED, f"bridge {cfg.bridge} is missing")
    if host is None:
        raise CniError(CHECK_FAILED, f"host veth {host_name} of {_attachment(env)} is missing")
    if host.master != bridge.index:
        raise CniError(CHECK_FAILED, f"host veth {host_name} is not attached to bridge {cfg.bridge}")
    if host.mtu != cfg.mtu:
        raise CniError(CHECK_FAILED, f"host veth {host_name} has MTU {host.mtu}, expected {cfg.mtu}")
    source_validation.check(cfg, host_name, mac, ips)


def _known(exc: Exception) -> CniError:
    """A collected error as CNI error: datapath errors by class, file and socket errors
    as I/O failures (5), anything else as a bug."""
    known = as_cni_error(exc)
    if known is not None:
        return known
    return CniError(IO_FAILURE if isinstance(exc, OSError) else INTERNAL, str(exc))


def cmd_gc(env, conf):
    from ..datapath import links, netns

    cfg = plugin_config.load(conf, "GC")
    valid = valid_attachments(conf)
    keep_links = {host_veth_name(container_id, ifname) for container_id, ifname in valid}
    errors = []
    teardown.finish_all(cfg.data_dir, cfg.lock_timeout, errors)  # what DELs said, before the sweep
    try:
        with netns.open_node() as rt:
            bridge = rt.link(cfg.bridge)
            stale = links.veths_on_bridge(rt, bridge.index) if bridge is not None else []
            # veths of killed ADDs that never reached a bridge are weft's too
            stale += links.unattached_veths(rt, HOST_VETH_PREFIX)
            for name in stale:
                if not name.startswith(HOST_VETH_PREFIX) or name in keep_links \
                        or attachment_lock.busy(cfg.data_dir, name):
                    continue  # not weft's, still wanted, or a call is working on it
                try:
                    links.delete(rt, name)
                except Exception as exc:
                    errors.append(CniError(IO_FAILURE, f"cannot delete stale veth {name}: {exc}"))
    except DatapathError as exc:
        errors.append(exc)
    errors += source_validation.forget_stale(cfg, keep_links,
                                             lambda name: attachment_lock.busy(cfg.data_dir, name))
    try:
        delegate.run(cfg.ipam_type, "GC", env, cfg.delegate_conf)
    except CniError as exc:
        errors.append(exc)
    _raise_first(errors)


def cmd_status(env, conf):
    from ..subnet import status_file

    cfg = plugin_config.load(conf, "STATUS")
    agent = status_file.read(status_file.beside_subnet_file(cfg.subnet_file))
    if agent and agent.get("conflict"):
        raise CniError(NOT_AVAILABLE_LIMITED, f"weftd reports a lease conflict: {agent['conflict']}")
    delegate.run(cfg.ipam_type, "STATUS", env, cfg.delegate_conf)


HANDLERS = {name: speaks_cni(handler) for name, handler in
            {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}.items()}
