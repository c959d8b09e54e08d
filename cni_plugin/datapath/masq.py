"""IP masquerade for pod traffic leaving the cluster, with nftables (the `nft` tool).

One table per network, `inet weft_<name>`: sets of pod addresses (each element
carries the attachment as its comment, so DEL needs no state of ours) and of
destinations that are never masqueraded (the pod subnet / cluster network and
multicast).  The table goes away with the last pod.
"""

import fcntl
import ipaddress
import json
import os
import re
import subprocess
from contextlib import contextmanager

from ..errors import IO_FAILURE, CniError

NFT = "nft"
_NEVER_MASQ = {4: ["224.0.0.0/4"], 6: ["ff00::/8"]}


def table_name(network: str) -> str:
    return "weft_" + re.sub(r"[^A-Za-z0-9_]", "_", network)


def _nft(args: list, stdin: str = None, check=True):
    try:
        proc = subprocess.run([NFT, *args], input=stdin, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise CniError(IO_FAILURE, "ipMasq needs the nft tool (Debian package nftables); install it "
                       "or set ipMasq: false")
    if check and proc.returncode != 0:
        raise CniError(IO_FAILURE, f"nft {' '.join(args[:4])} failed: {proc.stderr.strip()}")
    return proc


@contextmanager
def _locked(data_dir: str, network: str):
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(data_dir, f"masq-{network}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _list_table(table: str):
    """The table's sets as {name: [(value, comment)]}, or None when there is no table.
    Interval elements come back as ("10.0.0.0/16", "")."""
    proc = _nft(["-j", "list", "table", "inet", table], check=False)
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:  # nft's words for a missing table
            return None
        raise CniError(IO_FAILURE, f"nft list table inet {table} failed: {proc.stderr.strip()}")
    sets = {}
    for item in json.loads(proc.stdout).get("nftables", []):
        nft_set = item.get("set")
        if not nft_set:
            continue
        elements = sets.setdefault(nft_set["name"], [])
        for elem in nft_set.get("elem", []):
            comment = ""
            if isinstance(elem, dict) and "elem" in elem:
                comment = elem["elem"].get("comment", "")
                elem = elem["elem"].get("val")
            if isinstance(elem, dict) and "prefix" in elem:
                elem = f"{elem['prefix']['addr']}/{elem['prefix']['len']}"
            elements.append((str(elem), comment))
    return sets


def _uncovered(networks: list, present: list) -> list:
    """The networks not inside one already in the set (nft refuses overlapping intervals)."""
    have = [ipaddress.ip_network(value, strict=False) for value, _ in present]
    wanted = []
    for version in (4, 6):
        mine = [n for n in networks if n.version == version]
        for net in ipaddress.collapse_addresses(mine):
            if not any(h.version == version and net.subnet_of(h) for h in have):
                wanted.append(net)
    return wanted


def _table_script(table: str) -> str:
    return f"""table inet {table} {{
  set pods4 {{ type ipv4_addr; }}
  set pods6 {{ type ipv6_addr; }}
  set nomasq4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {', '.join(_NEVER_MASQ[4])} }} }}
  set nomasq6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {', '.join(_NEVER_MASQ[6])} }} }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr @pods4 ip daddr != @nomasq4 masquerade
    ip6 saddr @pods6 ip6 daddr != @nomasq6 masquerade
  }}
}}
"""


def add(data_dir: str, network: str, attachment: str, pod_ips: list, keep_local: list) -> None:
    """Masquerade pod_ips (ip_interface) towards anything outside keep_local (networks)."""
    table = table_name(network)
    with _locked(data_dir, network):
        sets = _list_table(table)
        script = _table_script(table) if sets is None else ""
        sets = sets or {}
        present = sets.get("nomasq4", []) + sets.get("nomasq6", [])
        for net in _uncovered(list(keep_local), present):
            script += f"add element inet {table} nomasq{net.version} {{ {net} }}\n"
        for ip in pod_ips:
            script += f'add element inet {table} pods{ip.version} {{ {ip.ip} comment "{attachment}" }}\n'
        _nft(["-f", "-"], stdin=script)


def _elements(table: str) -> dict:
    """{pod set name: [(value, comment)]}; {} when the table is absent."""
    sets = _list_table(table)
    return {} if sets is None else {name: sets.get(name, []) for name in ("pods4", "pods6")}


def remove(data_dir: str, network: str, attachment: str) -> None:
    """Drop the attachment's pod addresses; the table goes when no pod is left."""
    table = table_name(network)
    with _locked(data_dir, network):
        sets = _elements(table)
        if not sets:
            return
        script = ""
        remaining = 0
        for set_name, elements in sets.items():
            for value, comment in elements:
                if comment == attachment:
                    script += f"delete element inet {table} {set_name} {{ {value} }}\n"
                else:
                    remaining += 1
        if remaining == 0:
            script = f"delete table inet {table}\n"
        if script:
            _nft(["-f", "-"], stdin=script)


def attachments(network: str) -> set:
    """The attachment comments present in the table (for GC)."""
    return {comment for elements in _elements(table_name(network)).values() for _, comment in elements}
