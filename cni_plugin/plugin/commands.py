"""weft's CNI commands: IPAM delegate + datapath, with rollback on failure.

Handlers take (CniEnv, conf) as cni.dispatch calls them.  Kernel work lives in
cni_plugin.datapath (imported lazily, so VERSION and STATUS never load pyroute2);
its errors become CNI codes in plugin/errors.py.
"""

import ipaddress

from ..cni import log
from ..cni import result as cni_result
from ..cni.errors import (ATTACHMENT_EXISTS, CHECK_FAILED, DELEGATE_FAILED, INTERNAL, INVALID_NETCONF,
                          IO_FAILURE, NOT_AVAILABLE_LIMITED, CniError)
from ..cni.netconf import valid_attachments
from ..datapath.naming import HOST_VETH_PREFIX, host_veth_name
from . import config as plugin_config
from . import delegate
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


def _setup(cfg, env, mac: str, ipam: dict, rt) -> dict:
    from ..datapath import container, links, masq, netns, sysctl

    ips = [ipaddress.ip_interface(entry["address"]) for entry in ipam["ips"]]
    bridge = links.ensure_bridge(rt, cfg.bridge, cfg.mtu)
    sysctl.set_interface("ipv6", cfg.bridge, "accept_ra", "0")
    if cfg.is_gateway:
        for entry, ip in zip(ipam["ips"], ips):
            links.ensure_gateway_address(rt, cfg.bridge, bridge.index, _gateway_of(entry),
                                         ip.network, cfg.force_address)
        sysctl.enable_forwarding({ip.version for ip in ips})
    host_name = host_veth_name(env.container_id, env.ifname)
    host = links.create_veth(rt, host_name, env.netns, env.ifname, cfg.mtu)
    sysctl.set_interface("ipv6", host_name, "accept_ra", "0")
    links.attach_to_bridge(rt, host.index, bridge.index, cfg.hairpin_mode)
    routes = _container_routes(cfg, ipam)
    with netns.open_container(env.netns) as crt:
        inside = container.configure(crt, env.ifname, mac, ips, routes)
    if cfg.ip_masq:
        masq.add(cfg.data_dir, cfg.name, _attachment(env), ips,
                 [ip.network for ip in ips] + list(cfg.cluster_networks))
    return _result(cfg, env, ipam, routes, inside, [(cfg.bridge, bridge.address), (host_name, host.address)])


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
    netns.check_container_netns(env.netns)
    host_name = host_veth_name(env.container_id, env.ifname)
    with netns.open_node() as rt:
        if rt.link(host_name) is not None:
            raise CniError(ATTACHMENT_EXISTS, f"attachment {_attachment(env)} already exists (host "
                           f"veth {host_name}); the runtime must DEL it before adding it again")
        ipam = delegate.run(cfg.ipam_type, "ADD", env, cfg.delegate_conf)
        try:
            if not ipam["ips"]:
                raise CniError(DELEGATE_FAILED, f"IPAM plugin {cfg.ipam_type} returned no IP address")
            return _setup(cfg, env, mac, ipam, rt)
        except BaseException:
            _rollback(cfg, env, rt, host_name)
            raise


def _rollback(cfg, env, rt, host_name: str) -> None:
    """Undo a failed ADD: links, masquerade entries, the IP allocation.  Every step is
    tried; a step that fails is written to the log file (the runtime sees the ADD's
    own error, and the operator finds what may be left behind)."""
    from ..datapath import links, masq

    steps = (("delete host veth " + host_name, lambda: links.delete(rt, host_name)),
             ("remove masquerade entries", lambda: cfg.ip_masq and masq.remove(cfg.data_dir, cfg.name,
                                                                               _attachment(env))),
             (f"release the IP via {cfg.ipam_type} DEL",
              lambda: delegate.run(cfg.ipam_type, "DEL", env, cfg.delegate_conf)))
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # keep undoing
            log.record(cfg.log_file, {"command": "ADD", "containerID": env.container_id,
                                      "ifname": env.ifname, "rollback": what, "rollbackError": str(exc)})


def cmd_del(env, conf):
    from ..datapath import links, masq, netns

    cfg = plugin_config.load(conf, "DEL")
    errors = []
    host_name = host_veth_name(env.container_id, env.ifname)
    if env.netns and netns.netns_exists(env.netns):
        try:
            with netns.open_container(env.netns) as crt:
                links.delete(crt, env.ifname)  # takes the host end with it
        except Exception as exc:
            errors.append(exc)
    with netns.open_node() as rt:
        links.delete(rt, host_name)
    if cfg.ip_masq:
        try:
            masq.remove(cfg.data_dir, cfg.name, _attachment(env))
        except DatapathError as exc:
            errors.append(exc)
    _release(cfg, env, errors)
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
    from ..datapath import container, netns

    cfg = plugin_config.load(conf, "CHECK")
    iface, ips, prev = _prev_attachment(cfg, env)
    delegate.run(cfg.ipam_type, "CHECK", env, cfg.delegate_conf)
    netns.check_container_netns(env.netns)
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
    with netns.open_container(env.netns) as crt:
        container.verify(crt, env.ifname, iface.get("mac", ""), ips, routes, cfg.mtu)
    host_name = host_veth_name(env.container_id, env.ifname)
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


def _known(exc: Exception) -> CniError:
    """A collected error as CNI error: datapath errors by class, anything else as a bug."""
    return as_cni_error(exc) or CniError(INTERNAL, str(exc))


def cmd_gc(env, conf):
    from ..datapath import links, masq, netns

    cfg = plugin_config.load(conf, "GC")
    valid = valid_attachments(conf)
    keep_links = {host_veth_name(container_id, ifname) for container_id, ifname in valid}
    keep_masq = {f"{container_id}/{ifname}" for container_id, ifname in valid}
    errors = []
    with netns.open_node() as rt:
        bridge = rt.link(cfg.bridge)
        if bridge is not None:
            for name in links.veths_on_bridge(rt, bridge.index):
                if name.startswith(HOST_VETH_PREFIX) and name not in keep_links:
                    try:
                        links.delete(rt, name)
                    except Exception as exc:
                        errors.append(CniError(IO_FAILURE, f"cannot delete stale veth {name}: {exc}"))
    if cfg.ip_masq:
        try:
            for stale in masq.attachments(cfg.name) - keep_masq:
                masq.remove(cfg.data_dir, cfg.name, stale)
        except DatapathError as exc:
            errors.append(exc)
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
