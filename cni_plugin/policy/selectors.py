"""Kubernetes label selectors (metav1.LabelSelector): matchLabels and matchExpressions.

An empty selector ({}) matches everything; a missing one is the caller's business
(in a NetworkPolicy peer it means "not restricted by this dimension").
"""

from dataclasses import dataclass

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A selector that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: frozenset

    def matches(self, labels: dict) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # NotIn: also true when the key is absent


@dataclass(frozen=True)
class Selector:
    requirements: tuple = ()

    def matches(self, labels: dict) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def everything(self) -> bool:
        return not self.requirements

    def describe(self) -> str:
        if self.everything:
            return "all"
        parts = []
        for r in self.requirements:
            if r.operator in ("Exists", "DoesNotExist"):
                parts.append(("" if r.operator == "Exists" else "!") + r.key)
            elif r.operator == "In" and len(r.values) == 1:
                parts.append(f"{r.key}={next(iter(r.values))}")
            else:
                parts.append(f"{r.key} {r.operator.lower()} ({','.join(sorted(r.values))})")
        return ",".join(parts)


def _label_text(value, where: str) -> str:
    if not isinstance(value, str):
        raise SelectorError(f"{where} must be a string, got {value!r}")
    return value


def parse(raw, where: str) -> Selector:
    """A selector from its Kubernetes form; SelectorError naming the field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SelectorError(f"{where} must be an object, got {raw!r}")
    unknown = set(raw) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise SelectorError(f"{where}.{sorted(unknown)[0]} is not a label selector field "
                            "(matchLabels, matchExpressions)")
    requirements = []
    labels = raw.get("matchLabels") or {}
    if not isinstance(labels, dict):
        raise SelectorError(f"{where}.matchLabels must be an object of label: value")
    for key, value in sorted(labels.items()):
        requirements.append(Requirement(key, "In", frozenset([_label_text(value, f"{where}.matchLabels.{key}")])))
    expressions = raw.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise SelectorError(f"{where}.matchExpressions must be a list")
    for i, expr in enumerate(expressions):
        at = f"{where}.matchExpressions[{i}]"
        if not isinstance(expr, dict):
            raise SelectorError(f"{at} must be an object")
        key = _label_text(expr.get("key"), f"{at}.key")
        operator = expr.get("operator")
        if operator not in OPERATORS:
            raise SelectorError(f"{at}.operator {operator!r} is not one of {', '.join(OPERATORS)}")
        values = expr.get("values") or []
        if not isinstance(values, list):
            raise SelectorError(f"{at}.values must be a list")
        values = [_label_text(v, f"{at}.values[{j}]") for j, v in enumerate(values)]
        if operator in ("In", "NotIn") and not values:
            raise SelectorError(f"{at}.values must not be empty for operator {operator}")
        if operator in ("Exists", "DoesNotExist") and values:
            raise SelectorError(f"{at}.values must be empty for operator {operator}")
        requirements.append(Requirement(key, operator, frozenset(values)))
    return Selector(tuple(requirements))
