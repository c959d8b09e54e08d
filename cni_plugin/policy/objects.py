"""Pods, Namespaces and NetworkPolicies as weft reads them from Kubernetes objects.

Only the fields NetworkPolicy semantics need are kept.  Every field is validated the
way the API server would refuse it, and the message names the object and the field
path (e.g. `NetworkPolicy x/deny: spec.ingress[0].ports[1].endPort 79 is below port 80`).
`parse_documents` is all-or-nothing: one bad object and nothing is returned.
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import Optional, Union

from ..checks import PORT_MAX, PORT_MIN, is_int, is_port
from . import selectors
from .selectors import Selector, SelectorError

API_VERSION = "networking.k8s.io/v1"
PROTOCOLS = ("TCP", "UDP", "SCTP")
POLICY_TYPES = ("Ingress", "Egress")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by Kubernetes
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")  # IANA_SVC_NAME


class PolicyError(ValueError):
    """An object that cannot be used; the message names the object and the field."""


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple  # ((key, value), ...) including kubernetes.io/metadata.name

    @property
    def label_map(self) -> dict:
        return dict(self.labels)


@dataclass(frozen=True)
class ContainerPort:
    name: str
    port: int
    protocol: str


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: tuple
    ports: tuple = ()  # ContainerPort of its containers (for named ports)

    @property
    def label_map(self) -> dict:
        return dict(self.labels)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: str) -> Optional[int]:
        return next((p.port for p in self.ports if p.name == name and p.protocol == protocol), None)


@dataclass(frozen=True)
class IpBlock:
    cidr: Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
    excepts: tuple = ()

    def contains(self, ip) -> bool:
        return ip.version == self.cidr.version and ip in self.cidr and not any(ip in e for e in self.excepts)

    def describe(self) -> str:
        return f"ipBlock {self.cidr}" + (f" except {', '.join(map(str, self.excepts))}" if self.excepts else "")


@dataclass(frozen=True)
class Peer:
    pod_selector: Optional[Selector] = None
    namespace_selector: Optional[Selector] = None
    ip_block: Optional[IpBlock] = None

    def describe(self) -> str:
        if self.ip_block is not None:
            return self.ip_block.describe()
        parts = []
        if self.namespace_selector is not None:
            parts.append(f"namespaces {self.namespace_selector.describe()}")
        if self.pod_selector is not None:
            parts.append(f"pods {self.pod_selector.describe()}")
        return " and ".join(parts)


@dataclass(frozen=True)
class PortRule:
    protocol: str = "TCP"
    port: Union[int, str, None] = None  # None: every port of the protocol
    end_port: Optional[int] = None

    def describe(self) -> str:
        if self.port is None:
            return f"all {self.protocol}"
        span = f"{self.port}-{self.end_port}" if self.end_port else f"{self.port}"
        return f"{self.protocol} {span}"


@dataclass(frozen=True)
class Rule:
    peers: tuple = ()   # empty: every peer
    ports: tuple = ()   # empty: every port


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: Selector
    types: frozenset
    ingress: tuple = ()
    egress: tuple = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


# -- parsing -----------------------------------------------------------------------

def _metadata(raw: dict, kind: str, namespaced: bool) -> tuple:
    meta = raw.get("metadata")
    if not isinstance(meta, dict):
        raise PolicyError(f"{kind}: metadata must be an object with a name")
    name = meta.get("name")
    pattern = _DNS_SUBDOMAIN if kind == "NetworkPolicy" else _DNS_LABEL
    if not isinstance(name, str) or not pattern.match(name):
        raise PolicyError(f"{kind}: metadata.name {name!r} is not a valid name (lower-case letters, "
                          "digits and '-')")
    namespace = None
    if namespaced:
        namespace = meta.get("namespace", "default")
        if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
            raise PolicyError(f"{kind} {name}: metadata.namespace {namespace!r} is not a valid namespace name")
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in labels.items()):
        raise PolicyError(f"{kind} {name}: metadata.labels must map strings to strings")
    return name, namespace, tuple(sorted(labels.items()))


def _selector(raw, where: str, owner: str) -> Selector:
    try:
        return selectors.parse(raw, where)
    except SelectorError as exc:
        raise PolicyError(f"{owner}: {exc}") from None


def _port_value(value, where: str, owner: str):
    if is_int(value):
        if not is_port(value):
            raise PolicyError(f"{owner}: {where} {value} is out of range ({PORT_MIN}-{PORT_MAX})")
        return value
    if isinstance(value, str) and value.isdigit():
        return _port_value(int(value), where, owner)
    if isinstance(value, str) and _PORT_NAME.match(value):
        return value
    raise PolicyError(f"{owner}: {where} {value!r} is neither a port number nor a port name")


def _protocol(raw: dict, where: str, owner: str) -> str:
    protocol = raw.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        raise PolicyError(f"{owner}: {where}.protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    return protocol


def _port_rule(raw, where: str, owner: str) -> PortRule:
    if not isinstance(raw, dict):
        raise PolicyError(f"{owner}: {where} must be an object")
    protocol = _protocol(raw, where, owner)
    port = raw.get("port")
    port = None if port is None else _port_value(port, f"{where}.port", owner)
    end_port = raw.get("endPort")
    if end_port is not None:
        if not isinstance(port, int):
            raise PolicyError(f"{owner}: {where}.endPort needs a numeric {where}.port")
        end_port = _port_value(end_port, f"{where}.endPort", owner)
        if not isinstance(end_port, int) or end_port < port:
            raise PolicyError(f"{owner}: {where}.endPort {end_port} is below port {port}")
    return PortRule(protocol, port, end_port)


def _ip_block(raw, where: str, owner: str) -> IpBlock:
    if not isinstance(raw, dict) or not isinstance(raw.get("cidr"), str):
        raise PolicyError(f"{owner}: {where}.cidr is required (e.g. \"10.0.0.0/8\")")
    try:
        cidr = ipaddress.ip_network(raw["cidr"])
    except ValueError as exc:
        raise PolicyError(f"{owner}: {where}.cidr {raw['cidr']!r} is not a valid CIDR: {exc}") from None
    excepts = []
    for i, text in enumerate(raw.get("except") or []):
        try:
            net = ipaddress.ip_network(text)
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"{owner}: {where}.except[{i}] {text!r} is not a valid CIDR: {exc}") from None
        if net.version != cidr.version or not net.subnet_of(cidr) or net == cidr:
            raise PolicyError(f"{owner}: {where}.except[{i}] {net} must lie strictly inside cidr {cidr}")
        excepts.append(net)
    return IpBlock(cidr, tuple(excepts))


def _peer(raw, where: str, owner: str) -> Peer:
    if not isinstance(raw, dict):
        raise PolicyError(f"{owner}: {where} must be an object")
    known = {"podSelector", "namespaceSelector", "ipBlock"}
    unknown = set(raw) - known
    if unknown:
        raise PolicyError(f"{owner}: {where}.{sorted(unknown)[0]} is not a peer field "
                          "(podSelector, namespaceSelector, ipBlock)")
    if "ipBlock" in raw:
        if len(raw) > 1:
            raise PolicyError(f"{owner}: {where}.ipBlock cannot be combined with a selector in one peer")
        return Peer(ip_block=_ip_block(raw["ipBlock"], f"{where}.ipBlock", owner))
    if not raw:
        raise PolicyError(f"{owner}: {where} must set podSelector, namespaceSelector or ipBlock")
    return Peer(pod_selector=_selector(raw["podSelector"], f"{where}.podSelector", owner)
                if "podSelector" in raw else None,
                namespace_selector=_selector(raw["namespaceSelector"], f"{where}.namespaceSelector", owner)
                if "namespaceSelector" in raw else None)


def _rules(raw, where: str, peers_key: str, owner: str) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise PolicyError(f"{owner}: {where} must be a list of rules")
    rules = []
    for i, rule in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(rule, dict):
            raise PolicyError(f"{owner}: {at} must be an object")
        peers = rule.get(peers_key) or []
        ports = rule.get("ports") or []
        if not isinstance(peers, list) or not isinstance(ports, list):
            raise PolicyError(f"{owner}: {at}.{peers_key} and {at}.ports must be lists")
        rules.append(Rule(tuple(_peer(p, f"{at}.{peers_key}[{j}]", owner) for j, p in enumerate(peers)),
                          tuple(_port_rule(p, f"{at}.ports[{j}]", owner) for j, p in enumerate(ports))))
    return tuple(rules)


def parse_policy(raw: dict) -> NetworkPolicy:
    name, namespace, _ = _metadata(raw, "NetworkPolicy", True)
    owner = f"NetworkPolicy {namespace}/{name}"
    if raw.get("apiVersion") != API_VERSION:
        raise PolicyError(f"{owner}: apiVersion {raw.get('apiVersion')!r} must be {API_VERSION}")
    spec = raw.get("spec")
    if not isinstance(spec, dict) or "podSelector" not in spec:
        raise PolicyError(f"{owner}: spec.podSelector is required ({{}} selects every pod of the namespace)")
    types = spec.get("policyTypes")
    if types is None:  # the API's default: Ingress, and Egress when egress rules are given
        types = ["Ingress"] + (["Egress"] if spec.get("egress") is not None else [])
    if not isinstance(types, list) or not types or any(t not in POLICY_TYPES for t in types):
        raise PolicyError(f"{owner}: spec.policyTypes {types!r} must list Ingress and/or Egress")
    return NetworkPolicy(namespace=namespace, name=name,
                         pod_selector=_selector(spec["podSelector"], "spec.podSelector", owner),
                         types=frozenset(types),
                         ingress=_rules(spec.get("ingress"), "spec.ingress", "from", owner),
                         egress=_rules(spec.get("egress"), "spec.egress", "to", owner))


def parse_namespace(raw: dict) -> Namespace:
    name, _, labels = _metadata(raw, "Namespace", False)
    return Namespace(name, tuple(sorted(dict(labels, **{NAMESPACE_NAME_LABEL: name}).items())))


def parse_pod(raw: dict) -> Pod:
    name, namespace, labels = _metadata(raw, "Pod", True)
    owner = f"Pod {namespace}/{name}"
    ports = []
    spec = raw.get("spec") or {}
    containers = spec.get("containers") or [] if isinstance(spec, dict) else None
    if not isinstance(containers, list):
        raise PolicyError(f"{owner}: spec.containers must be a list")
    for i, container in enumerate(containers):
        for j, port in enumerate((container or {}).get("ports") or []):
            at = f"spec.containers[{i}].ports[{j}]"
            number = _port_value(port.get("containerPort"), f"{at}.containerPort", owner)
            if not isinstance(number, int):
                raise PolicyError(f"{owner}: {at}.containerPort must be a number")
            protocol = _protocol(port, at, owner)
            if port.get("name"):
                ports.append(ContainerPort(_port_value(port["name"], f"{at}.name", owner), number, protocol))
    return Pod(namespace, name, labels, tuple(ports))


PARSERS = {"NetworkPolicy": parse_policy, "Namespace": parse_namespace, "Pod": parse_pod}


def parse_object(raw):
    if not isinstance(raw, dict):
        raise PolicyError(f"a document must be a Kubernetes object, got {type(raw).__name__}")
    kind = raw.get("kind")
    if kind not in PARSERS:
        raise PolicyError(f"kind {kind!r} is not one weft reads ({', '.join(PARSERS)})")
    return PARSERS[kind](raw)


def parse_documents(documents) -> list:
    """Every object of a multi-document file, or PolicyError for the first bad one
    (prefixed with its position): nothing partial."""
    out = []
    for index, raw in enumerate(d for d in documents if d is not None):
        try:
            out.append(parse_object(raw))
        except PolicyError as exc:
            raise PolicyError(f"document {index + 1}: {exc}") from None
    return out
