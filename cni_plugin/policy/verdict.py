"""May a flow pass?  NetworkPolicy's rules, applied to one packet's first hop.

A flow from `src` to `dst` on (protocol, port) passes when both sides allow it:
- egress, at the source pod: allowed when no policy with type Egress selects the pod
  (it is not isolated), else when at least one such policy has an egress rule whose
  peers include the destination and whose ports include the port;
- ingress, at the destination pod: the same with type Ingress and the source.
Policies add up (their union); there is no deny rule.  An endpoint that is not a pod
(an address outside the cluster's pods) has no side of its own and is matched only
by ipBlock peers.  Traffic from the destination pod's own node always passes
(kubelet's probes).  Replies of allowed connections are not decided here: the
enforcement lets established traffic back.
"""

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from .objects import NetworkPolicy, Pod


@dataclass(frozen=True)
class Endpoint:
    ip: object                    # ipaddress address
    pod: Optional[Pod] = None     # None: not a pod of the cluster
    node: bool = False            # the address of the destination's own node

    @classmethod
    def of(cls, ip, pod=None, node=False) -> "Endpoint":
        return cls(ipaddress.ip_address(str(ip)), pod, node)

    def describe(self) -> str:
        return f"{self.pod.ref} ({self.ip})" if self.pod else str(self.ip)


@dataclass
class Side:
    """One direction's finding: which policies select the pod, and which allow."""

    direction: str                # "ingress" | "egress"
    isolated: bool = False
    selecting: list = field(default_factory=list)   # policy refs
    allowing: list = field(default_factory=list)    # (policy ref, rule index, why)

    @property
    def allowed(self) -> bool:
        return not self.isolated or bool(self.allowing)


@dataclass
class Verdict:
    allowed: bool
    egress: Side
    ingress: Side
    note: str = ""

    def explain(self) -> list:
        """Lines that name the policies behind the verdict."""
        lines = []
        for side in (self.egress, self.ingress):
            if not side.isolated:
                lines.append(f"{side.direction}: not isolated (no policy of type "
                             f"{side.direction.capitalize()} selects the pod)")
            elif side.allowing:
                for ref, index, why in side.allowing:
                    lines.append(f"{side.direction}: allowed by {ref} rule {index} ({why})")
            else:
                lines.append(f"{side.direction}: denied: isolated by {', '.join(side.selecting)} and no rule "
                             "of theirs allows it")
        if self.note:
            lines.insert(0, self.note)
        return lines


class Cluster:
    """The objects verdicts are made over: namespaces (by name) and policies."""

    def __init__(self, namespaces=(), policies=()):
        self.namespaces = {n.name: n for n in namespaces}
        self.policies = list(policies)

    def namespace_labels(self, name: str) -> dict:
        found = self.namespaces.get(name)
        # a namespace weft has no object for still has the label Kubernetes always sets
        return found.label_map if found else {"kubernetes.io/metadata.name": name}

    def selecting(self, pod: Pod, policy_type: str) -> list:
        return [p for p in self.policies if p.namespace == pod.namespace and policy_type in p.types
                and p.pod_selector.matches(pod.label_map)]

    def _peer_matches(self, policy: NetworkPolicy, peer, other: Endpoint) -> bool:
        if peer.ip_block is not None:
            return peer.ip_block.contains(other.ip)
        if other.pod is None:
            return False
        if peer.namespace_selector is None:  # pods of the policy's own namespace
            if other.pod.namespace != policy.namespace:
                return False
        elif not peer.namespace_selector.matches(self.namespace_labels(other.pod.namespace)):
            return False
        return peer.pod_selector is None or peer.pod_selector.matches(other.pod.label_map)

    @staticmethod
    def _port_matches(rule_port, protocol: str, port: int, dst: Endpoint) -> bool:
        if rule_port.protocol != protocol:
            return False
        if rule_port.port is None:
            return True
        if isinstance(rule_port.port, str):  # a named port: the destination pod's
            return dst.pod is not None and dst.pod.named_port(rule_port.port, protocol) == port
        if rule_port.end_port is not None:
            return rule_port.port <= port <= rule_port.end_port
        return rule_port.port == port

    def _side(self, direction: str, pod: Pod, other: Endpoint, protocol: str, port: int,
              dst: Endpoint) -> Side:
        policy_type = direction.capitalize()
        side = Side(direction)
        for policy in self.selecting(pod, policy_type):
            side.isolated = True
            side.selecting.append(policy.ref)
            rules = policy.ingress if direction == "ingress" else policy.egress
            for index, rule in enumerate(rules):
                peer = next((p for p in rule.peers if self._peer_matches(policy, p, other)), None)
                if rule.peers and peer is None:
                    continue
                ports = next((p for p in rule.ports if self._port_matches(p, protocol, port, dst)), None)
                if rule.ports and ports is None:
                    continue
                who = peer.describe() if peer is not None else "any peer"
                what = ports.describe() if ports is not None else "any port"
                side.allowing.append((policy.ref, index, f"{who}, {what}"))
        return side

    def decide(self, src: Endpoint, dst: Endpoint, protocol: str = "TCP", port: int = 80) -> Verdict:
        egress = self._side("egress", src.pod, dst, protocol, port, dst) if src.pod else Side("egress")
        if dst.pod is None:
            ingress = Side("ingress")
        elif src.node:
            return Verdict(egress.allowed, egress, Side("ingress"),
                           note="traffic from the pod's own node always passes (kubelet probes)")
        else:
            ingress = self._side("ingress", dst.pod, src, protocol, port, dst)
        return Verdict(egress.allowed and ingress.allowed, egress, ingress)
