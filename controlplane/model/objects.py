"""ClusterLink objects: the in-memory form, parsing from YAML/JSON documents, semantic validation.

An `Object` is kind + metadata + a validated, defaulted spec + status. `parse_documents` turns a
multi-document YAML text into objects, or raises `ModelError` naming the document, the object, the
field and the problem for every invalid document (nothing is half-applied by callers because they
validate everything before storing anything).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import yaml

from . import schema as S
from .validate import FieldError, FieldErrors, check, raise_all

DEFAULT_NAMESPACE = "default"
SYSTEM_NAMESPACE = "clusterlink-system"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_DNS_LABEL_RE = re.compile(rf"^{_DNS_LABEL}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*\.?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$")
_IGNORED_METADATA = {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "finalizers",
                     "ownerReferences", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds",
                     "generateName"}


class ModelError(ValueError):
    """One or more documents are invalid; `errors` lists one message per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class ObjectKey(NamedTuple):
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"


@dataclass(frozen=True, eq=True)
class Object:
    kind: str
    name: str
    namespace: str
    spec: Mapping[str, Any]
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)
    resource_version: int = 0
    generation: int = 0
    uid: str = ""
    creation_timestamp: str = ""

    __hash__ = None  # type: ignore[assignment]  # mappings inside: not hashable

    @property
    def key(self) -> ObjectKey:
        return ObjectKey(self.kind, self.namespace, self.name)

    @property
    def info(self) -> S.KindInfo:
        return S.kind_info(self.kind)

    def with_status(self, status: Mapping[str, Any]) -> Object:
        return replace(self, status=dict(status))

    def with_spec(self, spec: Mapping[str, Any]) -> Object:
        return replace(self, spec=dict(spec))

    def to_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name}
        if self.namespace:
            meta["namespace"] = self.namespace
        if self.labels:
            meta["labels"] = dict(self.labels)
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        if self.uid:
            meta["uid"] = self.uid
        if self.resource_version:
            meta["resourceVersion"] = str(self.resource_version)
        if self.generation:
            meta["generation"] = self.generation
        if self.creation_timestamp:
            meta["creationTimestamp"] = self.creation_timestamp
        doc: dict[str, Any] = {"apiVersion": S.API_VERSION, "kind": self.kind, "metadata": meta,
                               "spec": json.loads(json.dumps(self.spec))}
        if self.status:
            doc["status"] = json.loads(json.dumps(self.status))
        return doc


def is_dns_subdomain(name: str) -> bool:
    return len(name) <= 253 and bool(_DNS_SUBDOMAIN.match(name))


def is_host(host: str) -> bool:
    """A DNS name or an IP literal (what a gateway or service address may be)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME.match(host))


def _label_key_ok(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and is_dns_subdomain(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_NAME.match(name))


def _check_labels(labels: Any, path: str, errors: list[FieldError]) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        errors.append(FieldError(path, "must be a map of strings"))
        return {}
    out = {}
    for k, v in labels.items():
        if not isinstance(k, str) or not _label_key_ok(k):
            errors.append(FieldError(f"{path}[{k!r}]", "invalid label key (a qualified name: [prefix/]name, name "
                                                       "at most 63 of [-_.A-Za-z0-9], alphanumeric at both ends)"))
            continue
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            errors.append(FieldError(f"{path}[{k!r}]", f"label value must be a string, not {v!r}"))
            continue
        v = str(v) if not isinstance(v, str) else v
        if v and (len(v) > 63 or not _LABEL_NAME.match(v)):
            errors.append(FieldError(f"{path}[{k!r}]", f"invalid label value {v!r} (at most 63 of [-_.A-Za-z0-9], "
                                                       "alphanumeric at both ends)"))
            continue
        out[k] = v
    return out


def from_dict(doc: Any, *, default_namespace: str = DEFAULT_NAMESPACE, keep_status: bool = False) -> Object:
    """Validate one document (a dict from YAML/JSON) and build the Object. Raises FieldError, or
    FieldErrors listing every problem when there are several."""
    if not isinstance(doc, dict):
        raise FieldError("", f"a document must be a mapping, not {type(doc).__name__}")
    api_version = doc.get("apiVersion")
    kind = doc.get("kind")
    if not isinstance(kind, str) or not kind:
        raise FieldError("kind", "required field is missing")
    info = S.BY_KIND.get(kind)
    if info is None:
        known = ", ".join(k.kind for k in S.ALL_KINDS)
        raise FieldError("kind", f"unknown kind {kind!r} (known kinds: {known})")
    errors: list[FieldError] = []

    def problem(path: str, message: str) -> None:
        errors.append(FieldError(path, message))

    if api_version != S.API_VERSION:
        problem("apiVersion", f"must be {S.API_VERSION!r}, not {api_version!r}")
    for key in doc:
        if key not in ("apiVersion", "kind", "metadata", "spec", "status"):
            problem(str(key), "unknown top-level field (known: apiVersion, kind, metadata, spec, status)")
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        problem("metadata", "required field is missing" if meta is None else "must be a mapping")
        meta = {}
    for key in meta:
        if key not in ("name", "namespace", "labels", "annotations") and key not in _IGNORED_METADATA:
            problem(f"metadata.{key}", "unknown field")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        problem("metadata.name", "required field is missing")
        name = ""
    elif not is_dns_subdomain(name):
        problem("metadata.name", f"{name!r} is not a valid name (lowercase RFC 1123: [a-z0-9-.], "
                                 "alphanumeric at both ends, at most 253 characters)")
    elif kind == S.IMPORT.kind and len(name) > S.IMPORT_NAME_MAX:
        problem("metadata.name", f"Import name must be at most {S.IMPORT_NAME_MAX} characters "
                                 f"(it becomes a Service name), got {len(name)}")
    namespace = meta.get("namespace") or ""
    if not isinstance(namespace, str):
        problem("metadata.namespace", "must be a string")
        namespace = ""
    if info.namespaced:
        namespace = namespace or default_namespace
        if len(namespace) > 63 or not _DNS_LABEL_RE.match(namespace):
            problem("metadata.namespace", f"{namespace!r} is not a valid namespace (RFC 1123 label)")
    else:
        namespace = ""  # cluster-scoped: a namespace in the document is ignored, as the API server does
    labels = _check_labels(meta.get("labels"), "metadata.labels", errors)
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        problem("metadata.annotations", "must be a map of strings")
        annotations = {}
    raw_spec = doc.get("spec")
    spec: dict[str, Any] = {}
    if raw_spec is None:
        problem("spec", "required field is missing")
    else:
        try:
            spec = check(raw_spec, info.spec, "spec")
        except FieldError as exc:
            errors += _problems(exc)
        else:
            try:
                _check_semantics(kind, name, namespace, spec)
            except FieldError as exc:
                errors += _problems(exc)
    status: dict[str, Any] = {}
    if keep_status and isinstance(doc.get("status"), dict) and info.status is not None:
        try:
            status = check(doc["status"], info.status, "status")
        except FieldError as exc:
            errors += _problems(exc)
    raise_all(errors)
    return Object(kind=kind, name=name, namespace=namespace, spec=spec, labels=labels,
                  annotations=dict(annotations), status=status)


def _problems(exc: FieldError) -> list[FieldError]:
    return list(exc.errors) if isinstance(exc, FieldErrors) else [exc]


def _check_semantics(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> None:
    if kind == S.PEER.kind:
        for i, gw in enumerate(spec["gateways"]):
            _check_host(gw["host"], f"spec.gateways[{i}].host")
    elif kind == S.EXPORT.kind:
        if spec.get("host"):
            _check_host(spec["host"], "spec.host")
    elif kind == S.LOCAL_SERVICE.kind:
        _check_host(spec["host"], "spec.host")
    elif kind == S.WORKLOAD.kind:
        if not spec["cgroup"].startswith("/"):
            raise FieldError("spec.cgroup", f"{spec['cgroup']!r} must be an absolute path under the cgroup2 mount")
    elif kind in (S.ACCESS_POLICY.kind, S.PRIVILEGED_ACCESS_POLICY.kind):
        from controlplane.policy.policy import PolicyError, parse_policy_spec

        try:
            parse_policy_spec(spec, name=name, namespace=namespace,
                              privileged=kind == S.PRIVILEGED_ACCESS_POLICY.kind)
        except PolicyError as exc:
            raise FieldError(getattr(exc, "field", "") or "spec", str(exc)) from None


def _check_host(host: str, path: str) -> None:
    if "${" in host:
        raise FieldError(path, f"{host!r} contains an unsubstituted placeholder (fill it, e.g. with envsubst)")
    if not is_host(host):
        raise FieldError(path, f"{host!r} is not a DNS name or an IP address")


def _describe(doc: Any) -> str:
    if isinstance(doc, dict):
        kind = doc.get("kind") or "?"
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        name = meta.get("name") or "?"
        ns = meta.get("namespace")
        return f"{kind} {ns}/{name}" if ns else f"{kind} {name}"
    return "not a mapping"


def parse_documents(text: str, *, source: str = "<input>", default_namespace: str = DEFAULT_NAMESPACE) -> list[Object]:
    """Parse every YAML (or JSON) document of `text`; raise ModelError listing every problem."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ModelError([f"{source}: not valid YAML{where}: {problem}"]) from None
    if not docs:
        raise ModelError([f"{source}: no documents found"])
    objects: list[Object] = []
    errors: list[str] = []
    for i, doc in enumerate(docs, start=1):
        # A `kind: List` wrapper (what `kubectl get -o yaml` prints) holds its objects in items.
        items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
        if not isinstance(items, list):
            errors.append(f"{source}: document {i} (List): items must be a list")
            continue
        for doc_item in items:
            try:
                objects.append(from_dict(doc_item, default_namespace=default_namespace))
            except FieldError as exc:
                errors += [f"{source}: document {i} ({_describe(doc_item)}): {e}" for e in _problems(exc)]
    seen: dict[ObjectKey, int] = {}
    for obj in objects:
        seen[obj.key] = seen.get(obj.key, 0) + 1
    errors += [f"{source}: {key} appears {n} times" for key, n in seen.items() if n > 1]
    if errors:
        raise ModelError(errors)
    return objects
