"""Kubernetes label selectors: parsing, validation and matching against flat string maps.

A `LabelSelector` is the ClusterLink `workloadSelector`: `matchLabels` and `matchExpressions`
(`In`, `NotIn`, `Exists`, `DoesNotExist`), all requirements ANDed, with the Kubernetes semantics
(an empty selector matches everything; `NotIn` matches when the key is absent). Label keys must be
Kubernetes qualified names and values valid label values. This module also validates those names
for the rest of the package (`check_label_key`, `check_label_value`, `check_dns_subdomain`,
`check_dns_label`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "LabelSelector",
    "Operator",
    "Requirement",
    "SelectorError",
    "check_dns_label",
    "check_dns_subdomain",
    "check_label_key",
    "check_label_value",
    "parse_selector",
]

_NAME_MAX = 63
_PREFIX_MAX = 253
_NAME_RE = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_LABEL_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")


class SelectorError(ValueError):
    """An invalid label selector. `field` is the path of the offending field (may be "")."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class Operator(str, Enum):
    """A `matchExpressions` operator (spelled exactly as in Kubernetes)."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


_OPERATORS_TEXT = "In, NotIn, Exists, DoesNotExist"


# --- name validation (shared with policy.py) -----------------------------------------------------


def check_label_key(key: object) -> str | None:
    """Return why `key` is not a Kubernetes qualified name, or None when it is valid."""
    if not isinstance(key, str):
        return f"label key must be a string, not {_type_name(key)}"
    if key.count("/") > 1:
        return f"invalid label key {key!r}: at most one '/' allowed"
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return f"invalid label key {key!r}: prefix part must not be empty"
        if len(prefix) > _PREFIX_MAX or not _DNS_SUBDOMAIN_RE.fullmatch(prefix):
            return (
                f"invalid label key {key!r}: prefix must be a DNS subdomain (lowercase alphanumerics, "
                f"'-' and '.', at most {_PREFIX_MAX} characters)"
            )
    if not name:
        return f"invalid label key {key!r}: name part must not be empty"
    if len(name) > _NAME_MAX:
        return f"invalid label key {key!r}: name part must be at most {_NAME_MAX} characters"
    if not _NAME_RE.fullmatch(name):
        return (
            f"invalid label key {key!r}: name part must consist of alphanumerics, '-', '_' or '.', "
            "and start and end with an alphanumeric"
        )
    return None


def check_label_value(value: object) -> str | None:
    """Return why `value` is not a valid Kubernetes label value, or None when it is valid."""
    if not isinstance(value, str):
        return f"label value must be a string, not {_type_name(value)}"
    if value == "":
        return None
    if len(value) > _NAME_MAX:
        return f"invalid label value {value!r}: must be at most {_NAME_MAX} characters"
    if not _NAME_RE.fullmatch(value):
        return (
            f"invalid label value {value!r}: must consist of alphanumerics, '-', '_' or '.', "
            "and start and end with an alphanumeric"
        )
    return None


def check_dns_subdomain(value: object) -> str | None:
    """Return why `value` is not a DNS-1123 subdomain (an object name), or None when it is."""
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    if not value:
        return "must not be empty"
    if len(value) > _PREFIX_MAX or not _DNS_SUBDOMAIN_RE.fullmatch(value):
        return (
            f"invalid name {value!r}: must be a DNS subdomain (lowercase alphanumerics, '-' and '.', "
            f"start and end with an alphanumeric, at most {_PREFIX_MAX} characters)"
        )
    return None


def check_dns_label(value: object) -> str | None:
    """Return why `value` is not a DNS-1123 label (a namespace name), or None when it is."""
    if not isinstance(value, str):
        return f"must be a string, not {_type_name(value)}"
    if not value:
        return "must not be empty"
    if len(value) > _NAME_MAX or not _DNS_LABEL_RE.fullmatch(value):
        return (
            f"invalid name {value!r}: must be a DNS label (lowercase alphanumerics and '-', start and "
            f"end with an alphanumeric, at most {_NAME_MAX} characters)"
        )
    return None


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


# --- the model -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requirement:
    """One `matchExpressions` entry: `key operator values`."""

    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "operator", Operator(self.operator))
        object.__setattr__(self, "values", frozenset(self.values))
        reason = check_label_key(self.key)
        if reason is None:
            reason = _check_values(self.operator, self.values)
        if reason is None:
            for value in self.values:
                reason = check_label_value(value)
                if reason is not None:
                    break
        if reason is not None:
            raise SelectorError("", reason)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether `labels` satisfy this requirement (Kubernetes semantics)."""
        op = self.operator
        if op is Operator.IN:
            value = labels.get(self.key)
            return value is not None and value in self.values
        if op is Operator.NOT_IN:
            value = labels.get(self.key)
            return value is None or value not in self.values
        if op is Operator.EXISTS:
            return self.key in labels
        return self.key not in labels

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"key": self.key, "operator": self.operator.value}
        if self.values:
            out["values"] = sorted(self.values)
        return out

    def __str__(self) -> str:
        op = self.operator
        if op is Operator.EXISTS:
            return self.key
        if op is Operator.DOES_NOT_EXIST:
            return f"!{self.key}"
        word = "in" if op is Operator.IN else "notin"
        return f"{self.key} {word} ({','.join(sorted(self.values))})"


def _check_values(op: Operator, values: frozenset[str] | list[object]) -> str | None:
    if op in (Operator.IN, Operator.NOT_IN):
        if not values:
            return f"values must be non-empty for operator {op.value}"
    elif values:
        return f"values must be empty for operator {op.value}"
    return None


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A Kubernetes LabelSelector. Equal selectors compare equal; instances are immutable.

    `match_labels` is kept as a key-sorted tuple of pairs (a mapping is accepted and normalised).
    """

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()
    _expressions: tuple[Requirement, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        labels = self.match_labels
        pairs = labels.items() if isinstance(labels, Mapping) else labels
        normalised = tuple(sorted((k, v) for k, v in pairs))
        for key, value in normalised:
            reason = check_label_key(key) or check_label_value(value)
            if reason is not None:
                raise SelectorError("", reason)
        if len({k for k, _ in normalised}) != len(normalised):
            raise SelectorError("", "duplicate key in matchLabels")
        object.__setattr__(self, "match_labels", normalised)
        expressions = tuple(self.match_expressions)
        for req in expressions:
            if not isinstance(req, Requirement):
                raise SelectorError("", f"match_expressions must hold Requirement objects, not {_type_name(req)}")
        object.__setattr__(self, "match_expressions", expressions)
        # Requirements cheapest first: Exists/DoesNotExist, then the rest in their given order.
        object.__setattr__(
            self,
            "_expressions",
            tuple(sorted(expressions, key=lambda r: r.operator not in (Operator.EXISTS, Operator.DOES_NOT_EXIST))),
        )

    @classmethod
    def everything(cls) -> LabelSelector:
        """The empty selector, which matches every label set."""
        return cls()

    @property
    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    @property
    def requirements(self) -> tuple[Requirement, ...]:
        """All requirements, `matchLabels` entries expressed as single-valued `In`."""
        return tuple(Requirement(k, Operator.IN, frozenset((v,))) for k, v in self.match_labels) + self.match_expressions

    def keys(self) -> frozenset[str]:
        """Every label key this selector looks at."""
        return frozenset(k for k, _ in self.match_labels) | frozenset(r.key for r in self.match_expressions)

    def equalities(self) -> list[tuple[str, frozenset[str]]]:
        """The requirements that pin a key to a finite set of values (`matchLabels`, `In`)."""
        out = [(k, frozenset((v,))) for k, v in self.match_labels]
        out.extend((r.key, r.values) for r in self.match_expressions if r.operator is Operator.IN)
        return out

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether `labels` satisfy every requirement (an empty selector matches everything)."""
        get = labels.get
        for key, value in self.match_labels:
            if get(key) != value:
                return False
        for req in self._expressions:
            if not req.matches(labels):
                return False
        return True

    def to_dict(self) -> dict[str, object]:
        """The selector as a Kubernetes LabelSelector document."""
        out: dict[str, object] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [r.to_dict() for r in self.match_expressions]
        return out

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        parts.extend(str(r) for r in self.match_expressions)
        return ",".join(parts) if parts else "<everything>"


# --- parsing -------------------------------------------------------------------------------------

_SELECTOR_FIELDS = ("matchLabels", "matchExpressions")
_EXPRESSION_FIELDS = ("key", "operator", "values")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def parse_selector(doc: object, path: str = "") -> LabelSelector:
    """Parse a Kubernetes LabelSelector document (a mapping) into a `LabelSelector`.

    `path` is the field path of `doc` in its enclosing object; errors name the offending field
    below it. Raises `SelectorError`.
    """
    if not isinstance(doc, Mapping):
        raise SelectorError(path, f"must be an object, not {_type_name(doc)}")
    for name in doc:
        if name not in _SELECTOR_FIELDS:
            raise SelectorError(_join(path, str(name)), "unknown field (want matchLabels, matchExpressions)")

    labels_path = _join(path, "matchLabels")
    raw_labels = doc.get("matchLabels")
    match_labels: list[tuple[str, str]] = []
    if raw_labels is not None:
        if not isinstance(raw_labels, Mapping):
            raise SelectorError(labels_path, f"must be an object, not {_type_name(raw_labels)}")
        for key, value in raw_labels.items():
            reason = check_label_key(key)
            if reason is not None:
                raise SelectorError(labels_path, reason)
            reason = check_label_value(value)
            if reason is not None:
                raise SelectorError(f"{labels_path}.{key}", reason)
            match_labels.append((key, value))

    exprs_path = _join(path, "matchExpressions")
    raw_exprs = doc.get("matchExpressions")
    expressions: list[Requirement] = []
    if raw_exprs is not None:
        if not isinstance(raw_exprs, list):
            raise SelectorError(exprs_path, f"must be a list, not {_type_name(raw_exprs)}")
        for i, raw in enumerate(raw_exprs):
            expressions.append(_parse_requirement(raw, f"{exprs_path}[{i}]"))

    return LabelSelector(tuple(match_labels), tuple(expressions))


def _parse_requirement(raw: object, path: str) -> Requirement:
    if not isinstance(raw, Mapping):
        raise SelectorError(path, f"must be an object, not {_type_name(raw)}")
    for name in raw:
        if name not in _EXPRESSION_FIELDS:
            raise SelectorError(f"{path}.{name}", "unknown field (want key, operator, values)")

    if "key" not in raw or raw["key"] is None:
        raise SelectorError(f"{path}.key", "required")
    key = raw["key"]
    reason = check_label_key(key)
    if reason is not None:
        raise SelectorError(f"{path}.key", reason)

    if "operator" not in raw or raw["operator"] is None:
        raise SelectorError(f"{path}.operator", f"required (want {_OPERATORS_TEXT})")
    op_text = raw["operator"]
    if not isinstance(op_text, str):
        raise SelectorError(f"{path}.operator", f"must be a string, not {_type_name(op_text)} (want {_OPERATORS_TEXT})")
    try:
        operator = Operator(op_text)
    except ValueError:
        raise SelectorError(f"{path}.operator", f'unknown operator "{op_text}" (want {_OPERATORS_TEXT})') from None

    raw_values = raw.get("values")
    values_path = f"{path}.values"
    if raw_values is None:
        raw_values = []
    if not isinstance(raw_values, list):
        raise SelectorError(values_path, f"must be a list, not {_type_name(raw_values)}")
    reason = _check_values(operator, raw_values)
    if reason is not None:
        raise SelectorError(values_path, reason)
    for i, value in enumerate(raw_values):
        reason = check_label_value(value)
        if reason is not None:
            raise SelectorError(f"{values_path}[{i}]", reason)
    return Requirement(key, operator, frozenset(raw_values))
