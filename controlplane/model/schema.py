"""The single definition of every ClusterLink kind: OpenAPI v3 schemas and CRD metadata.

Everything else derives from this module: structural validation of applied objects
(`controlplane.model.validate`), the CRDs in the Helm chart (`controlplane.model.crdgen`), and the
CLI's kind names. Field names, defaults and condition types are ClusterLink's (v1alpha1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Transport protocols (`spec.protocol`): defined with the agents' contract, re-exported here.
from controlplane.api.protocols import (  # noqa: F401
    DEFAULT_PROTOCOL, PROTOCOL_BOTH, PROTOCOL_TCP, PROTOCOL_UDP, PROTOCOLS, carried)

GROUP = "clusterlink.net"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Condition types and reasons (ClusterLink's names).
PEER_REACHABLE = "PeerReachable"
REASON_HEARTBEAT = "Heartbeat"
EXPORT_VALID = "ExportValid"
REASON_VERIFIED = "Verified"
REASON_ERROR = "Error"
IMPORT_TARGET_PORT_VALID = "ImportTargetPortValid"
REASON_LEASED = "Leased"
IMPORT_SERVICE_VALID = "ImportServiceValid"
REASON_VALID = "Valid"

LB_SCHEMES = ("round-robin", "random", "static")
DEFAULT_LB_SCHEME = "round-robin"
IMPORT_NAME_MAX = 63

Schema = dict[str, Any]

_PORT: Schema = {"type": "integer", "minimum": 1, "maximum": 65535}
_LABELS: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
_PROTOCOL: Schema = {"type": "string", "enum": list(PROTOCOLS), "default": DEFAULT_PROTOCOL,
                     "description": "Transport protocol carried: TCP (default), UDP, or TCPAndUDP (both, on the "
                                    "same port, e.g. DNS or iperf3 -u)"}

_CONDITION: Schema = {
    "type": "object",
    "required": ["type", "status", "lastTransitionTime", "reason", "message"],
    "properties": {
        "type": {"type": "string", "maxLength": 316},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string", "maxLength": 1024},
        "message": {"type": "string", "maxLength": 32768},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "observedGeneration": {"type": "integer", "minimum": 0},
    },
}
_CONDITIONS: Schema = {
    "type": "array",
    "items": _CONDITION,
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}

_LABEL_SELECTOR: Schema = {
    "type": "object",
    "description": "A Kubernetes label selector over the ClusterLink attributes.",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"type": "string"},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_WORKLOAD_SET_OR_SELECTOR: Schema = {
    "type": "object",
    "description": "Exactly one of workloadSelector or workloadSets (workloadSets is not supported yet).",
    "properties": {
        "workloadSets": {"type": "array", "items": {"type": "string"}},
        "workloadSelector": _LABEL_SELECTOR,
    },
}
_POLICY_SPEC: Schema = {
    "type": "object",
    "required": ["action", "from", "to"],
    "properties": {
        "action": {"type": "string", "enum": ["allow", "deny"], "description": "allow or deny."},
        "from": {"type": "array", "minItems": 1, "items": _WORKLOAD_SET_OR_SELECTOR,
                 "description": "Sources: the policy matches when the source matches any entry."},
        "to": {"type": "array", "minItems": 1, "items": _WORKLOAD_SET_OR_SELECTOR,
               "description": "Destinations: the policy matches when the destination matches any entry."},
    },
}


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0
    description: str = ""


@dataclass(frozen=True)
class KindInfo:
    """One kind: its names, scope, schemas and how `kubectl get` and `clusterlink get` show it."""

    kind: str
    plural: str
    namespaced: bool
    spec: Schema
    status: Schema | None
    short_names: tuple[str, ...] = ()
    columns: tuple[PrinterColumn, ...] = ()
    standalone_only: bool = False  # not a CRD: the local store's stand-in for a Kubernetes object
    description: str = ""
    extra_validations: tuple[dict[str, str], ...] = field(default=())

    @property
    def singular(self) -> str:
        return self.kind.lower()


PEER = KindInfo(
    kind="Peer",
    plural="peers",
    namespaced=True,
    short_names=("clpeer",),
    description="A remote ClusterLink peer. metadata.name must equal the peer certificate's DNS SAN.",
    spec={
        "type": "object",
        "required": ["gateways"],
        "properties": {
            "gateways": {
                "type": "array",
                "minItems": 1,
                "description": "Endpoints of the peer's gateways (LoadBalancer or node address and port).",
                "items": {
                    "type": "object",
                    "required": ["host", "port"],
                    "properties": {
                        "host": {"type": "string", "minLength": 1, "description": "DNS name or IP address."},
                        "port": _PORT,
                    },
                },
            }
        },
    },
    status={
        "type": "object",
        "properties": {
            "conditions": _CONDITIONS,
            "labels": {**_LABELS, "description": "The remote peer's labels, learned from its heartbeat."},
        },
    },
    columns=(
        PrinterColumn("Reachable", '.status.conditions[?(@.type=="PeerReachable")].status',
                      description="PeerReachable condition (heartbeats)"),
        PrinterColumn("Gateway", ".spec.gateways[0].host"),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
    ),
)

EXPORT = KindInfo(
    kind="Export",
    plural="exports",
    namespaced=True,
    short_names=("clexport",),
    description="Makes a local service available to other peers.",
    spec={
        "type": "object",
        "required": ["port"],
        "properties": {
            "host": {"type": "string",
                     "description": "Target host; default: the Service <name>.<namespace>.svc.cluster.local."},
            "port": {**_PORT, "description": "Target port."},
            "protocol": dict(_PROTOCOL),
        },
    },
    status={"type": "object", "properties": {"conditions": _CONDITIONS}},
    columns=(
        PrinterColumn("Valid", '.status.conditions[?(@.type=="ExportValid")].status'),
        PrinterColumn("Port", ".spec.port", "integer"),
        PrinterColumn("Protocol", ".spec.protocol"),
        PrinterColumn("Host", ".spec.host", priority=1),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
    ),
)

IMPORT = KindInfo(
    kind="Import",
    plural="imports",
    namespaced=True,
    short_names=("climport",),
    description="Makes services exported by other peers reachable under a local Service name.",
    spec={
        "type": "object",
        "required": ["port", "sources"],
        "properties": {
            "port": {**_PORT, "description": "The port clients use (the local Service's port)."},
            "targetPort": {"type": "integer", "minimum": 0, "maximum": 65535,
                           "description": "Gateway port for this import; 0 or unset: leased automatically "
                                          "and written back."},
            "sources": {
                "type": "array",
                "minItems": 1,
                "description": "Exports that back this import; order matters for lbScheme static.",
                "items": {
                    "type": "object",
                    "required": ["peer", "exportName", "exportNamespace"],
                    "properties": {
                        "peer": {"type": "string", "minLength": 1},
                        "exportName": {"type": "string", "minLength": 1},
                        "exportNamespace": {"type": "string", "minLength": 1},
                    },
                },
            },
            "lbScheme": {"type": "string", "enum": list(LB_SCHEMES), "default": DEFAULT_LB_SCHEME,
                         "description": "round-robin (default), random, or static (ordered failover)."},
            "protocol": dict(_PROTOCOL),
        },
    },
    status={
        "type": "object",
        "properties": {
            "conditions": _CONDITIONS,
            "vip": {"type": "string", "description": "Service address clients connect to (standalone: leased)."},
        },
    },
    columns=(
        PrinterColumn("Port", ".spec.port", "integer"),
        PrinterColumn("Protocol", ".spec.protocol"),
        PrinterColumn("TargetPort", ".spec.targetPort", "integer"),
        PrinterColumn("VIP", ".status.vip"),
        PrinterColumn("PortValid", '.status.conditions[?(@.type=="ImportTargetPortValid")].status'),
        PrinterColumn("ServiceValid", '.status.conditions[?(@.type=="ImportServiceValid")].status'),
        PrinterColumn("LB", ".spec.lbScheme", priority=1),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
    ),
    extra_validations=({"rule": "size(self.metadata.name) <= 63",
                        "message": "Import name must be at most 63 characters"},),
)

ACCESS_POLICY = KindInfo(
    kind="AccessPolicy",
    plural="accesspolicies",
    namespaced=True,
    short_names=("clap",),
    description="Allows or denies connections; applies in its own namespace (the Import's on egress, "
                "the Export's on ingress).",
    spec=_POLICY_SPEC,
    status=None,
    columns=(
        PrinterColumn("Action", ".spec.action"),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
    ),
)

PRIVILEGED_ACCESS_POLICY = KindInfo(
    kind="PrivilegedAccessPolicy",
    plural="privilegedaccesspolicies",
    namespaced=False,
    short_names=("clpap",),
    description="Cluster-wide policy that takes precedence over every AccessPolicy.",
    spec=_POLICY_SPEC,
    status=None,
    columns=(
        PrinterColumn("Action", ".spec.action"),
        PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
    ),
)

WORKLOAD = KindInfo(
    kind="Workload",
    plural="workloads",
    namespaced=True,
    standalone_only=True,
    description="Standalone mode's stand-in for a Pod: the workload running in a cgroup.",
    spec={
        "type": "object",
        "required": ["cgroup"],
        "properties": {
            "cgroup": {"type": "string", "minLength": 1,
                       "description": "cgroup v2 path of the workload, relative to the cgroup2 mount."},
            "node": {"type": "string", "description": "Node (agent) the workload runs on; empty: any."},
            "serviceAccount": {"type": "string", "default": "default"},
        },
    },
    status=None,
)

LOCAL_SERVICE = KindInfo(
    kind="LocalService",
    plural="localservices",
    namespaced=True,
    standalone_only=True,
    description="Standalone mode's stand-in for a Kubernetes Service: where the service listens. An "
                "Export without spec.host targets the LocalService of the same name and namespace.",
    spec={
        "type": "object",
        "required": ["host"],
        "properties": {"host": {"type": "string", "minLength": 1, "description": "DNS name or IP address."}},
    },
    status=None,
)

ALL_KINDS: tuple[KindInfo, ...] = (PEER, EXPORT, IMPORT, ACCESS_POLICY, PRIVILEGED_ACCESS_POLICY, WORKLOAD,
                                   LOCAL_SERVICE)
CRD_KINDS: tuple[KindInfo, ...] = tuple(k for k in ALL_KINDS if not k.standalone_only)
BY_KIND: dict[str, KindInfo] = {k.kind: k for k in ALL_KINDS}


def kind_info(kind: str) -> KindInfo:
    return BY_KIND[kind]


def resolve_kind(name: str) -> KindInfo | None:
    """Resolve what a user typed (kind, plural, singular, short name; any case) to a kind."""
    wanted = name.strip().lower()
    if "." in wanted:  # "imports.clusterlink.net"
        wanted, _, group = wanted.partition(".")
        if group != GROUP:
            return None
    for info in ALL_KINDS:
        if wanted in (info.kind.lower(), info.plural, info.singular, *info.short_names):
            return info
    return None
