"""Access policies: the `Policy` value and parsing of AccessPolicy / PrivilegedAccessPolicy objects.

`parse_policy` takes a whole object (`apiVersion`, `kind`, `metadata`, `spec`, as decoded from
YAML or JSON) and `parse_policy_spec` only its `spec`; both validate everything and raise
`PolicyError`, whose `field` names the offending field (e.g.
`spec.from[0].workloadSelector.matchExpressions[1].operator`). A `Policy` is immutable and always
valid; it is the only thing the engine accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from controlplane.policy.selector import (
    LabelSelector,
    SelectorError,
    _type_name,
    check_dns_label,
    check_dns_subdomain,
    parse_selector,
)

__all__ = [
    "API_VERSION",
    "CLIENT_ATTRIBUTE_PREFIX",
    "KIND_ACCESS_POLICY",
    "KIND_PRIVILEGED_ACCESS_POLICY",
    "Action",
    "Policy",
    "PolicyError",
    "parse_policy",
    "parse_policy_spec",
]

API_VERSION = "clusterlink.net/v1alpha1"
KIND_ACCESS_POLICY = "AccessPolicy"
KIND_PRIVILEGED_ACCESS_POLICY = "PrivilegedAccessPolicy"
# A `from` selector that looks at a key with this prefix depends on the client's identity.
CLIENT_ATTRIBUTE_PREFIX = "client.clusterlink.net/"


class PolicyError(ValueError):
    """An invalid policy. `field` is the path of the offending field; str() starts with it."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)


class Action(str, Enum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Policy:
    """One validated access policy.

    `namespace` is "" for a privileged (cluster-scoped) policy and required otherwise. `from_`
    and `to` are the `workloadSelector`s of `spec.from` and `spec.to` (never empty).
    """

    name: str
    namespace: str
    privileged: bool
    action: Action
    from_: tuple[LabelSelector, ...]
    to: tuple[LabelSelector, ...]
    depends_on_client_attributes: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))
        object.__setattr__(self, "privileged", bool(self.privileged))
        reason = check_dns_subdomain(self.name)
        if reason is not None:
            raise PolicyError("metadata.name", reason)
        if self.privileged:
            if self.namespace:
                raise PolicyError("metadata.namespace", "a PrivilegedAccessPolicy is cluster-scoped (use \"\")")
        else:
            reason = check_dns_label(self.namespace)
            if reason is not None:
                raise PolicyError("metadata.namespace", f"required for an AccessPolicy: {reason}")
        for side in ("from_", "to"):
            selectors = tuple(getattr(self, side))
            label = "spec." + side.rstrip("_")
            if not selectors:
                raise PolicyError(label, "must not be empty")
            for i, sel in enumerate(selectors):
                if not isinstance(sel, LabelSelector):
                    raise PolicyError(f"{label}[{i}]", f"must be a LabelSelector, not {_type_name(sel)}")
            object.__setattr__(self, side, selectors)
        depends = any(
            key.startswith(CLIENT_ATTRIBUTE_PREFIX) for sel in self.from_ for key in sel.keys()
        )
        object.__setattr__(self, "depends_on_client_attributes", depends)

    @property
    def key(self) -> tuple[bool, str, str]:
        """The identity of the policy in an engine: (privileged, namespace, name)."""
        return (self.privileged, self.namespace, self.name)

    @property
    def ref(self) -> str:
        """How decisions name this policy: "namespace/name", or "name" when privileged."""
        return self.name if self.privileged else f"{self.namespace}/{self.name}"

    @property
    def kind(self) -> str:
        return KIND_PRIVILEGED_ACCESS_POLICY if self.privileged else KIND_ACCESS_POLICY

    def matches(self, src: Mapping[str, str], dst: Mapping[str, str]) -> bool:
        """Whether `src` matches any `from` selector and `dst` matches any `to` selector."""
        for sel in self.from_:
            if sel.matches(src):
                break
        else:
            return False
        for sel in self.to:
            if sel.matches(dst):
                return True
        return False

    def to_dict(self) -> dict[str, object]:
        """The policy as a Kubernetes object document (parse_policy's inverse)."""
        metadata: dict[str, object] = {"name": self.name}
        if not self.privileged:
            metadata["namespace"] = self.namespace
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "metadata": metadata,
            "spec": {
                "action": self.action.value,
                "from": [{"workloadSelector": s.to_dict()} for s in self.from_],
                "to": [{"workloadSelector": s.to_dict()} for s in self.to],
            },
        }

    def __str__(self) -> str:
        return f"{self.kind} {self.ref}"


# --- parsing -------------------------------------------------------------------------------------

_SPEC_FIELDS = ("action", "from", "to")
_ELEMENT_FIELDS = ("workloadSelector", "workloadSets")


def parse_policy(doc: Mapping, *, privileged: bool | None = None) -> Policy:
    """Parse a whole AccessPolicy or PrivilegedAccessPolicy object.

    `kind` decides whether the policy is privileged; `privileged`, when given, is what the caller
    expects (a mismatching `kind` is an error) and allows `kind` to be absent. `apiVersion` is
    optional but checked when present. A namespace on a privileged policy is ignored.
    """
    if not isinstance(doc, Mapping):
        raise PolicyError("", f"a policy must be an object, not {_type_name(doc)}")
    api_version = doc.get("apiVersion")
    if api_version is not None and api_version != API_VERSION:
        raise PolicyError("apiVersion", f"unsupported apiVersion {api_version!r} (want {API_VERSION})")

    kind = doc.get("kind")
    if kind is None:
        if privileged is None:
            raise PolicyError("kind", f"required (want {KIND_ACCESS_POLICY} or {KIND_PRIVILEGED_ACCESS_POLICY})")
        is_privileged = privileged
    elif kind == KIND_ACCESS_POLICY or kind == KIND_PRIVILEGED_ACCESS_POLICY:
        is_privileged = kind == KIND_PRIVILEGED_ACCESS_POLICY
        if privileged is not None and privileged != is_privileged:
            want = KIND_PRIVILEGED_ACCESS_POLICY if privileged else KIND_ACCESS_POLICY
            raise PolicyError("kind", f"expected {want}, got {kind}")
    else:
        raise PolicyError("kind", f"unknown kind {kind!r} (want {KIND_ACCESS_POLICY} or {KIND_PRIVILEGED_ACCESS_POLICY})")

    metadata = doc.get("metadata")
    if metadata is None:
        raise PolicyError("metadata", "required")
    if not isinstance(metadata, Mapping):
        raise PolicyError("metadata", f"must be an object, not {_type_name(metadata)}")
    name = metadata.get("name")
    if name is None or name == "":
        raise PolicyError("metadata.name", "required")
    namespace = metadata.get("namespace")
    if is_privileged:
        namespace = ""
    elif namespace is None or namespace == "":
        raise PolicyError("metadata.namespace", f"required for an {KIND_ACCESS_POLICY}")

    if "spec" not in doc or doc["spec"] is None:
        raise PolicyError("spec", "required")
    return parse_policy_spec(doc["spec"], name=name, namespace=namespace, privileged=is_privileged)


def parse_policy_spec(spec: Mapping, *, name: str, namespace: str, privileged: bool) -> Policy:
    """Parse the `spec` of a policy named `name` (in `namespace`, ignored when privileged)."""
    reason = check_dns_subdomain(name)
    if reason is not None:
        raise PolicyError("metadata.name", reason)
    if privileged:
        namespace = ""
    else:
        reason = check_dns_label(namespace)
        if reason is not None:
            raise PolicyError("metadata.namespace", f"required for an {KIND_ACCESS_POLICY}: {reason}")

    if not isinstance(spec, Mapping):
        raise PolicyError("spec", f"must be an object, not {_type_name(spec)}")
    for key in spec:
        if key not in _SPEC_FIELDS:
            raise PolicyError(f"spec.{key}", "unknown field (want action, from, to)")

    action_text = spec.get("action")
    if action_text is None:
        raise PolicyError("spec.action", "required (want allow or deny)")
    if not isinstance(action_text, str):
        raise PolicyError("spec.action", f"must be a string, not {_type_name(action_text)} (want allow or deny)")
    if action_text == "":
        raise PolicyError("spec.action", "must not be empty (want allow or deny)")
    try:
        action = Action(action_text)
    except ValueError:
        raise PolicyError("spec.action", f'unknown action "{action_text}" (want allow or deny)') from None

    from_ = _parse_side(spec, "from")
    to = _parse_side(spec, "to")
    return Policy(name=name, namespace=namespace, privileged=privileged, action=action, from_=from_, to=to)


def _parse_side(spec: Mapping, side: str) -> tuple[LabelSelector, ...]:
    path = f"spec.{side}"
    elements = spec.get(side)
    if elements is None:
        raise PolicyError(path, "required (a non-empty list of {workloadSelector: ...})")
    if not isinstance(elements, list):
        raise PolicyError(path, f"must be a list, not {_type_name(elements)}")
    if not elements:
        raise PolicyError(path, "must not be empty")
    return tuple(_parse_element(element, f"{path}[{i}]") for i, element in enumerate(elements))


def _parse_element(element: object, path: str) -> LabelSelector:
    if not isinstance(element, Mapping):
        raise PolicyError(path, f"must be an object with workloadSelector, not {_type_name(element)}")
    for key in element:
        if key not in _ELEMENT_FIELDS:
            raise PolicyError(f"{path}.{key}", "unknown field (want workloadSelector)")
    selector = element.get("workloadSelector")
    sets = element.get("workloadSets")
    # As in ClusterLink, an empty workloadSets list counts as not set.
    if sets is not None:
        if not isinstance(sets, list):
            raise PolicyError(f"{path}.workloadSets", f"must be a list, not {_type_name(sets)}")
        if sets and selector is not None:
            raise PolicyError(path, "exactly one of workloadSelector or workloadSets may be set, not both")
        if sets:
            raise PolicyError(f"{path}.workloadSets", "workloadSets is not supported yet (use workloadSelector)")
    if selector is None:
        raise PolicyError(path, "workloadSelector is required (an empty selector {} matches everything)")
    try:
        return parse_selector(selector, f"{path}.workloadSelector")
    except SelectorError as exc:
        raise PolicyError(exc.field, exc.reason) from None

