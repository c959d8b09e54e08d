"""The one nftables module: every nftables read and change weft makes goes through here.

Today it drives the `nft` tool (JSON listing, scripts on stdin); callers see only
these functions and NftError, so moving to libnftables' in-process API changes
this file alone.
"""

import json
import subprocess

from .errors import NftError

NFT = "nft"
TIMEOUT = 30  # seconds


def _run(args: list, stdin: str = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([NFT, *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    except FileNotFoundError:
        raise NftError("ipMasq needs the nft tool (Debian package nftables); install it "
                       "or set ipMasq: false") from None
    except subprocess.TimeoutExpired:
        raise NftError(f"nft {' '.join(args[:4])} did not finish within {TIMEOUT}s") from None


def apply(script: str) -> None:
    """Run an nft script atomically (all of it or none)."""
    proc = _run(["-f", "-"], stdin=script)
    if proc.returncode != 0:
        raise NftError(f"nft -f - failed: {proc.stderr.strip()}")


def list_table(family: str, table: str):
    """The table as nft's JSON list of objects, or None when it does not exist.  Any
    other failure is an NftError: a table that cannot be read is not an absent one."""
    proc = _run(["-j", "list", "table", family, table])
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:  # nft's words for a missing table
            return None
        raise NftError(f"nft list table {family} {table} failed: {proc.stderr.strip()}")
    try:
        return json.loads(proc.stdout).get("nftables", [])
    except ValueError as exc:
        raise NftError(f"nft -j list table {family} {table} printed no JSON: {exc}") from None


def sets_of(objects: list) -> dict:
    """{set name: [(value, comment)]} from list_table's objects; interval elements come
    back as ("10.0.0.0/16", "")."""
    sets = {}
    for item in objects:
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
