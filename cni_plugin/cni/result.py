"""CNI results: one internal shape (the 1.1 layout) and conversion to what was asked.

Internal shape: {"interfaces": [...], "ips": [...], "routes": [...], "dns": {...}}
with ips as {"address": "10.1.0.5/24", "gateway"?: "10.1.0.1", "interface"?: 2}.
"""

import ipaddress

from .errors import DECODE_FAILURE, CniError
from . import versions

_IFACE_KEYS_1_0 = ("name", "mac", "sandbox")
_IFACE_KEYS_1_1 = _IFACE_KEYS_1_0 + ("mtu", "socketPath", "pciID")
_ROUTE_KEYS_1_0 = ("dst", "gw")
_ROUTE_KEYS_1_1 = _ROUTE_KEYS_1_0 + ("mtu", "advmss", "priority", "table", "scope")


def empty() -> dict:
    return {"interfaces": [], "ips": [], "routes": [], "dns": {}}


def ip_family(address: str) -> int:
    return ipaddress.ip_interface(address).version


def normalize(raw) -> dict:
    """Any supported version's result (e.g. prevResult, an IPAM delegate's) -> internal."""
    if not isinstance(raw, dict):
        raise CniError(DECODE_FAILURE, "result is not a JSON object")
    out = empty()
    try:
        out["interfaces"] = [dict(i) for i in raw.get("interfaces") or []]
        for ip in raw.get("ips") or []:
            entry = {"address": str(ipaddress.ip_interface(ip["address"]))}
            if ip.get("gateway"):
                entry["gateway"] = str(ipaddress.ip_address(ip["gateway"]))
            if isinstance(ip.get("interface"), int):
                entry["interface"] = ip["interface"]
            out["ips"].append(entry)
        for route in raw.get("routes") or []:
            entry = {k: v for k, v in route.items() if k in _ROUTE_KEYS_1_1}
            entry["dst"] = str(ipaddress.ip_network(route["dst"], strict=False))
            out["routes"].append(entry)
    except (KeyError, TypeError, ValueError) as exc:
        raise CniError(DECODE_FAILURE, f"result is malformed: {exc!r}")
    dns = raw.get("dns")
    out["dns"] = dict(dns) if isinstance(dns, dict) else {}
    return out


def render(result: dict, version: str) -> dict:
    """Internal -> the layout of `version`, with cniVersion set."""
    modern = versions.at_least(version, "1.0.0")
    iface_keys = _IFACE_KEYS_1_1 if versions.at_least(version, "1.1.0") else _IFACE_KEYS_1_0
    route_keys = _ROUTE_KEYS_1_1 if versions.at_least(version, "1.1.0") else _ROUTE_KEYS_1_0
    out = {"cniVersion": version}
    ifaces = [{k: i[k] for k in iface_keys if i.get(k) not in (None, "")} for i in result["interfaces"]]
    if ifaces:
        out["interfaces"] = ifaces
    ips = []
    for ip in result["ips"]:
        entry = {}
        if not modern:
            entry["version"] = str(ip_family(ip["address"]))
        entry.update({k: ip[k] for k in ("interface", "address", "gateway") if k in ip})
        ips.append(entry)
    out["ips"] = ips
    routes = [{k: r[k] for k in route_keys if k in r} for r in result["routes"]]
    if routes:
        out["routes"] = routes
    out["dns"] = {k: v for k, v in result.get("dns", {}).items() if v}
    return out
