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
from . import validation
from .lease import ConfigError, Lease, NetworkConfig, parse_subnet_key
from .registry import Registry

CREATE_ATTEMPTS = 16


class LeaseConflict(Exception):
    """Our subnet is held by another node; the message names both nodes."""


class NodeCollision(Exception):
    """Another agent identity (another NodeID) holds a lease under our node name: two
    agents run with one --node-name (e.g. cloned VMs).  Fatal: the message names both."""


class NoFreeSubnet(Exception):
    pass


@dataclass
class HeldLease:
    lease: Lease
    lease_id: int


def _parse_all(raw: list) -> dict:
    """{subnet key: (Lease or None if unreadable, etcd lease id)}"""
    out = {}
    for key, value, lease_id, *_ in raw:
        try:
            out[key] = (Lease.from_json(key, value), lease_id)
        except ConfigError:
            out[key] = (None, lease_id)
    return out


def collision_message(network: str, mine: Lease, key: str, theirs: Lease, lease_id: int) -> str:
    held = {None: "", 0: ", a reservation"}.get(lease_id, f", etcd lease {lease_id or 0:x}")
    return (f"network {network}: node name {mine.node_name} is already held by another agent: lease "
            f"{key} belongs to node {theirs.identity}{held}; this agent is node {mine.identity}; two agents "
            "must not share a --node-name (cloned machine?). Give this agent its own --node-name, or, "
            f"if that agent is gone for good, delete its lease (etcdctl del <prefix>/networks/{network}"
            f"/subnets/{key}) and start this one again")


class LeaseManager:
    def __init__(self, registry: Registry, config: NetworkConfig, template: Lease, state_dir: str):
        """template: this node's Lease fields (public IP, node name, backend and its data);
        its subnet is replaced by the one acquired."""
        self.registry = registry
        self.config = config
        self.template = template
        self.state_path = os.path.join(state_dir, config.name, "lease.json")

    # -- state dir: the subnet this node had, so a restart asks for it again --
    def recorded_subnet(self):
        """The key subnet recorded (IPv4, or IPv6 on an IPv6-only network), if still in range."""
        try:
            with open(self.state_path) as handle:
                subnet = ipaddress.ip_network(json.load(handle)["subnet"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        first, last = self.config.subnet_range()
        in_range = subnet.version == first.version and subnet.prefixlen == self.config.key_subnet_len \
            and first <= subnet <= last
        return subnet if in_range else None

    def record(self, held: HeldLease) -> None:
        write_atomic(self.state_path, json.dumps({"subnet": str(held.lease.key_subnet), "lease_id": held.lease_id,
                                                  "node": held.lease.node_name}), mode=0o644, make_dirs=True)

    def _with_subnet(self, subnet) -> Lease:
        """The template with the lease keyed by `subnet` (IPv6 on an IPv6-only network)."""
        return replace(self.template, subnet=subnet if subnet.version == 4 else None,
                       ipv6_subnet=self.config.ipv6_subnet_for(subnet))

    def is_mine(self, lease: Optional[Lease]) -> bool:
        """Our node name and our identity (a lease without NodeID, from an older agent or
        written by hand for this node name, counts as ours and is stamped on adoption)."""
        return lease is not None and lease.node_name == self.template.node_name and \
            lease.node_id in ("", self.template.node_id)

    def check_identity(self, key: str, lease: Optional[Lease], lease_id: int) -> None:
        """NodeCollision when `lease` carries our node name under another identity."""
        if lease is not None and lease.node_name == self.template.node_name and not self.is_mine(lease):
            raise NodeCollision(collision_message(self.config.name, self.template, key, lease, lease_id))

    def acquire(self, ttl: int) -> HeldLease:
        """Our live lease, else the recorded subnet if free, else a random free one
        (only when nothing is recorded: a recorded subnet taken by another node is a
        LeaseConflict).  "Free" is CIDR arithmetic against every lease key, and the key is
        created in a transaction that fails if any lease key changed since the listing.
        A lease under our node name with another NodeID is a NodeCollision."""
        for _ in range(CREATE_ATTEMPTS):
            raw, revision = self.registry.list_leases(self.config.name)
            leases = _parse_all(raw)
            for key, (lease, lease_id) in leases.items():
                self.check_identity(key, lease, lease_id)
            for key, (lease, lease_id) in leases.items():
                # a live lease of ours, or a reservation (no etcd lease) made for this node
                if self.is_mine(lease):
                    return self._adopt(key, lease, lease_id)
            space = validation.occupied(raw)
            recorded = self.recorded_subnet()
            if recorded is not None:
                if validation.is_free(space, recorded):
                    held = self._create(recorded, ttl, revision)
                    if held is not None:
                        return held
                    continue  # the leases changed meanwhile: look again
                # taken while we were away: our pods still use it, so no silent switch
                raise LeaseConflict(
                    f"network {self.config.name}: subnet {recorded} recorded for node "
                    f"{self.template.node_name} in {self.state_path} is now held by "
                    f"{self._holders(leases, recorded)}; not taking another subnet while pods may "
                    f"use this one (drain the node and delete {self.state_path} to take a fresh subnet)")
            free = self._random_free(space)
            if free is None:
                first, last = self.config.subnet_range()
                raise NoFreeSubnet(f"network {self.config.name}: no free /{self.config.key_subnet_len} subnet "
                                   f"between {first} and {last} ({self.config.subnet_count()} subnets, "
                                   "all leased, reserved or overlapped by other lease keys)")
            held = self._create(free, ttl, revision)
            if held is not None:
                return held
        raise NoFreeSubnet(f"network {self.config.name}: the leases kept changing during "
                           f"{CREATE_ATTEMPTS} attempts to create one; retrying later")

    @staticmethod
    def _holders(leases: dict, subnet) -> str:
        names = []
        for key, (lease, _) in sorted(leases.items()):
            try:
                if parse_subnet_key(key).overlaps(subnet):
                    names.append(f"{key} ({lease.node_name if lease else 'unreadable'})")
            except ConfigError:
                continue
        return ", ".join(names) or "another lease"

    def _random_free(self, space):
        """A random subnet of the range that no lease key touches, or None."""
        blocks = validation.free_blocks(space, *self.config.subnet_range())
        total = sum(count for _, count in blocks)
        return validation.nth_free(blocks, random.randrange(total), self.config.key_subnet_len) if total else None

    def republish(self, held: HeldLease, backend_data) -> HeldLease:
        """This node's lease with new BackendData (e.g. a rotated key), written to etcd
        now; if that write fails, the template keeps it and every later renew writes it
        until one succeeds (unpublished() says whether one still has to)."""
        self.template = replace(self.template, backend_data=backend_data)
        return self._adopt(held.lease.key, held.lease, held.lease_id)

    def unpublished(self, held: HeldLease) -> bool:
        """True while the lease in etcd (held.lease: the last one written or read back)
        lacks something of this node's current template, e.g. a rotated key whose
        write failed."""
        return bool(held.lease_id) and held.lease != self._with_subnet(held.lease.key_subnet)

    def _adopt(self, key, lease, lease_id) -> HeldLease:
        mine = self._with_subnet(parse_subnet_key(key))
        problem = validation.check_lease(mine, self.config)
        if problem:
            raise ConfigError(f"network {self.config.name}: this node's lease {key} contradicts the "
                              f"network config: {problem[1]}; restore the config, or let "
                              f"`weftctl network set {self.config.name} --force-migrate` delete the lease")
        if mine != lease and lease_id:  # e.g. new public IP or VTEP MAC, or our NodeID: publish it
            self.registry.update_lease(self.config.name, key, mine.to_json(), lease_id)
        held = HeldLease(mine, lease_id)
        self.record(held)
        return held

    def _create(self, subnet, ttl, listed_at: int) -> Optional[HeldLease]:
        lease = self._with_subnet(subnet)
        problem = validation.check_lease(lease, self.config)
        if problem:  # every other node would refuse it: say so here instead of publishing it
            raise ConfigError(f"network {self.config.name}: this node's lease would be refused by "
                              f"every node: {problem[1]}")
        lease_id = self.registry.create_lease(self.config.name, lease.key, lease.to_json(), ttl,
                                              listed_at=listed_at)
        if lease_id is None:
            return None
        held = HeldLease(lease, lease_id)
        self.record(held)
        return held

    def renew(self, held: HeldLease, ttl: int, verify: bool = False) -> HeldLease:
        """Keep the lease alive.  Vanished and still free: recreate the same subnet.
        Taken by another node: LeaseConflict (the caller keeps the datapath).
        verify: also check that the key is still there and bound to our etcd lease (a
        key deleted or rebound while the etcd lease lives is recreated too)."""
        if held.lease_id == 0:
            return held  # reservations do not expire
        alive = self.registry.refresh(held.lease_id) > 0
        if alive and not verify and not self.unpublished(held):
            return held
        raw, revision = self.registry.list_leases(self.config.name)
        current = _parse_all(raw).get(held.lease.key)
        if alive and current is not None and current[1] == held.lease_id and self.is_mine(current[0]):
            if current[0] != self._with_subnet(held.lease.key_subnet):  # e.g. a rotated key not yet published
                return self._adopt(held.lease.key, current[0], current[1])
            return held
        if current is None and validation.is_free(validation.occupied(raw), held.lease.key_subnet):
            again = self._create(held.lease.key_subnet, ttl, revision)
            if again is not None:
                return again
        if current is None:
            raw, _ = self.registry.list_leases(self.config.name)
            current = _parse_all(raw).get(held.lease.key)
        lease, lease_id = current if current else (None, 0)
        if lease_id and self.is_mine(lease):
            return self._adopt(held.lease.key, lease, lease_id)
        if lease is not None:
            self.check_identity(held.lease.key, lease, lease_id)
            other = lease.identity
        elif current is not None:
            other = "an unreadable lease"
        else:
            other = self._holders(_parse_all(raw), held.lease.key_subnet)
        raise LeaseConflict(f"network {self.config.name}: subnet {held.lease.key_subnet} of node "
                            f"{held.lease.node_name} is now held by {other}; keeping the datapath, "
                            f"not switching subnets (delete the other lease or this node's state "
                            f"{self.state_path} to resolve)")
