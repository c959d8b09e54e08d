"""IPv4 or IPv6-only: the one place the per-pod figures get either family's settings.

The figures `default`, `sequential`, `parallel` and `cri` measure their contenders on
an IPv4 network and again on an IPv6-only one (docs/configuration.md "An IPv6-only
network": `EnableIPv4` false, one IPv6 range, nothing else), every contender of both
families taking its turn in the same run, so the two families' ratios come from the
same minutes.  A figure keeps its IPv4 results where they always were (the top level
of its JSON) and puts the same fields for the IPv6-only network under "ipv6"
(`half(figure, 6)`); `--family ipv4|ipv6|both` picks which are measured.
"""

FAMILIES = {"ipv4": (4,), "ipv6": (6,), "both": (4, 6)}
IPV6 = "ipv6"  # the key of a figure's IPv6-only half
NAMES = {4: "IPv4", 6: "IPv6-only"}
IPV4_ONLY_KINDS = ("go-1.1",)  # plugins 1.1: the reference of runs before issue 24, compared on IPv4 only


def families(ctx) -> tuple:
    """The families this run measures (--family; both when the args do not say)."""
    return FAMILIES[getattr(ctx.args, "family", None) or "both"]


def kinds_of(kinds, family: int) -> tuple:
    """The contender kinds measured on the family: on the IPv6-only network every kind
    but plugins 1.1's chain (issue 27's ratios are against plugins 1.9.1; 1.1 stays on
    IPv4 beside it, for comparison with earlier runs)."""
    return tuple(k for k in kinds if family == 4 or k not in IPV4_ONLY_KINDS)


def half(figure: dict, family: int):
    """The dict holding one family's results in a figure's JSON (None when not measured)."""
    if not figure:
        return None
    return figure if family == 4 else figure.get(IPV6)


def slot(result: dict, family: int) -> dict:
    """half(), made when missing: where a figure writes one family's results."""
    return result if family == 4 else result.setdefault(IPV6, {})


def network_config(family: int, vni: int = 1) -> dict:
    """The etcd network config (`weftctl network set`) of the figure's weft network:
    the config's defaults otherwise, so masquerade is on (IPMasq, IPv6Masq)."""
    backend = {"Type": "vxlan", "VNI": vni}
    if family == 4:
        return {"Network": "10.244.0.0/16", "Backend": backend}
    return {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd10:244::/48", "IPv6SubnetLen": 64,
            "Backend": backend}


def pod_range(family: int, major: int, minor: int = None) -> str:
    """A static range: IPv4 10.<major>.<minor>.0/24 (10.<major>.0.0/16 without minor),
    IPv6 fd0a:<major>:<minor>::/64 (fd0a:<major>::/64)."""
    if family == 4:
        return f"10.{major}.0.0/16" if minor is None else f"10.{major}.{minor}.0/24"
    return f"fd0a:{major}::/64" if minor is None else f"fd0a:{major}:{minor}::/64"


def cluster_route(family: int, major: int) -> str:
    """The route a pod gets to the ranges pod_range(family, major, *) are taken from."""
    return f"10.{major}.0.0/16" if family == 4 else f"fd0a:{major}::/32"


def ip_family(address: str) -> int:
    """4 or 6, of an address with or without its prefix length."""
    return 6 if ":" in address else 4
