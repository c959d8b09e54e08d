"""Lease policy for one network on one node: acquire, renew, and never switch silently.

Storage is the registry's business (the interface in subnet/registry.py); this module
decides which subnet to ask for and what to do when the lease vanished or was taken.
"""

import ipaddress
import json
import os
import random
from dataclasses import dataclass, replace
from typing import Optional

from ..fsutil import write_atomic
from .lease import ConfigError, Lease, NetworkConfig, parse_subnet_key
from .registry import Registry

CREATE_ATTEMPTS = 16


class LeaseConflict(Exception):
    """Our subnet is held by another node; the message names both nodes."""


class NoFreeSubnet(Exception):
    pass


@dataclass
class HeldLease:
    lease: Lease
    lease_id: int


def _parse_all(raw: list) -> dict:
    """{subnet key: (Lease or None if unreadable, etcd lease id)}"""
    out = {}
    for key, value, lease_id in raw:
        try:
            out[key] = (Lease.from_json(key, value), lease_id)
        except ConfigError:
            out[key] = (None, lease_id)
    return out


def remote_leases(raw: list, own_key: Optional[str]) -> list:
    """The usable leases of other nodes (reservations included: they route too)."""
    return [lease for key, (lease, _) in _parse_all(raw).items() if lease is not None and key != own_key]


class LeaseManager:
    def __init__(self, registry: Registry, config: NetworkConfig, template: Lease, state_dir: str):
        """template: this node's Lease fields (public IP, node name, backend and its data);
        its subnet is replaced by the one acquired."""
        self.registry = registry
        self.config = config
        self.template = template
        self.state_path = os.path.join(state_dir, config.name, "lease.json")

    # -- state dir: the subnet this node had, so a restart asks for it again --
    def recorded_subnet(self) -> Optional[ipaddress.IPv4Network]:
        try:
            with open(self.state_path) as handle:
                subnet = ipaddress.IPv4Network(json.load(handle)["subnet"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        first, last = self.config.subnet_range()
        in_range = subnet.prefixlen == self.config.subnet_len and first <= subnet <= last
        return subnet if in_range else None

    def record(self, held: HeldLease) -> None:
        write_atomic(self.state_path, json.dumps({"subnet": str(held.lease.subnet), "lease_id": held.lease_id,
                                                  "node": held.lease.node_name}), mode=0o644, make_dirs=True)

    def _with_subnet(self, subnet) -> Lease:
        return replace(self.template, subnet=subnet, ipv6_subnet=self.config.ipv6_subnet_for(subnet))

    def acquire(self, ttl: int) -> HeldLease:
        """Our live lease, else the recorded subnet if free, else a random free one
        (only when nothing is recorded: a recorded subnet taken by another node is a
        LeaseConflict)."""
        raw, _ = self.registry.list_leases(self.config.name)
        leases = _parse_all(raw)
        for key, (lease, lease_id) in leases.items():
            # a live lease of ours, or a reservation (no etcd lease) made for this node
            if lease is not None and lease.node_name == self.template.node_name:
                return self._adopt(key, lease, lease_id)
        recorded = self.recorded_subnet()
        if recorded is not None:
            owner = leases.get(f"{recorded.network_address}-{recorded.prefixlen}")
            if owner is None:
                held = self._create(recorded, ttl)
                if held is not None:
                    return held
            else:  # taken while we were away: our pods still use it, so no silent switch
                other = owner[0].node_name if owner[0] is not None else "an unreadable lease"
                raise LeaseConflict(
                    f"network {self.config.name}: subnet {recorded} recorded for node "
                    f"{self.template.node_name} in {self.state_path} is now held by {other}; "
                    "not taking another subnet while pods may use this one (drain the node and "
                    f"delete {self.state_path} to take a fresh subnet)")
        return self._create_random(set(leases), ttl)

    def _adopt(self, key, lease, lease_id) -> HeldLease:
        mine = self._with_subnet(parse_subnet_key(key))
        if mine != lease:  # e.g. new public IP or VTEP MAC: publish it
            self.registry.update_lease(self.config.name, key, mine.to_json(), lease_id)
        held = HeldLease(mine, lease_id)
        self.record(held)
        return held

    def _create(self, subnet, ttl) -> Optional[HeldLease]:
        lease = self._with_subnet(subnet)
        lease_id = self.registry.create_lease(self.config.name, lease.key, lease.to_json(), ttl)
        if lease_id is None:
            return None
        held = HeldLease(lease, lease_id)
        self.record(held)
        return held

    def _create_random(self, taken: set, ttl: int) -> HeldLease:
        count = self.config.subnet_count()
        free = [i for i in range(count)
                if f"{self.config.nth_subnet(i).network_address}-{self.config.subnet_len}" not in taken]
        random.shuffle(free)
        for index in free[:CREATE_ATTEMPTS]:
            held = self._create(self.config.nth_subnet(index), ttl)
            if held is not None:
                return held
        first, last = self.config.subnet_range()
        raise NoFreeSubnet(f"network {self.config.name}: no free /{self.config.subnet_len} subnet "
                           f"between {first} and {last} ({count} subnets, all leased or reserved)")

    def renew(self, held: HeldLease, ttl: int, verify: bool = False) -> HeldLease:
        """Keep the lease alive.  Vanished and still free: recreate the same subnet.
        Taken by another node: LeaseConflict (the caller keeps the datapath).
        verify: also check that the key is still there and bound to our etcd lease (a
        key deleted or rebound while the etcd lease lives is recreated too)."""
        if held.lease_id == 0:
            return held  # reservations do not expire
        alive = self.registry.refresh(held.lease_id) > 0
        if alive and not verify:
            return held
        raw, _ = self.registry.list_leases(self.config.name)
        current = _parse_all(raw).get(held.lease.key)
        if alive and current is not None and current[1] == held.lease_id and current[0] is not None \
                and current[0].node_name == held.lease.node_name:
            return held
        if current is None:
            again = self._create(held.lease.subnet, ttl)
            if again is not None:
                return again
            raw, _ = self.registry.list_leases(self.config.name)
            current = _parse_all(raw).get(held.lease.key)
        lease, lease_id = current if current else (None, 0)
        if lease is not None and lease.node_name == held.lease.node_name and lease_id:
            return self._adopt(held.lease.key, lease, lease_id)
        other = lease.node_name if lease is not None else "an unreadable lease"
        raise LeaseConflict(f"network {self.config.name}: subnet {held.lease.subnet} of node "
                            f"{held.lease.node_name} is now held by {other}; keeping the datapath, "
                            f"not switching subnets (delete the other lease or this node's state "
                            f"{self.state_path} to resolve)")
