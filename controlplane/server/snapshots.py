"""Snapshot building (pure) and versioning: what gateways and agents are told.

The control plane renders its desired state into one `Snapshot` message per audience: gateways get
peers, exports, imports, policies and the token key; an agent gets the import table and its node's
workloads. A view gets a new version only when its content changed, and versions keep increasing
across control-plane restarts (they start from the wall clock in milliseconds).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from controlplane.api import clusterlink_pb2 as pb
from controlplane.model import schema as S
from controlplane.model.conditions import is_true
from controlplane.model.objects import Object

from .exports import ExportTarget


@dataclass(frozen=True)
class DesiredState:
    """Everything a snapshot is rendered from."""

    peer_name: str
    peer_labels: Mapping[str, str]
    system_namespace: str
    peers: Sequence[Object] = ()
    exports: Sequence[tuple[Object, ExportTarget]] = ()
    imports: Sequence[Object] = ()
    policies: Sequence[Object] = ()
    workloads: Sequence[Object] = ()
    token_key: bytes = b""
    gateway_agent_address: str = ""
    reachable: Mapping[str, bool] = field(default_factory=dict)


def _peer(obj: Object, reachable: Mapping[str, bool]) -> pb.PeerInfo:
    status_reachable = is_true(obj.status, S.PEER_REACHABLE)
    return pb.PeerInfo(
        name=obj.name,
        gateways=[pb.Gateway(host=g["host"], port=g["port"]) for g in obj.spec["gateways"]],
        reachable=reachable.get(obj.name, status_reachable),
        labels=dict(obj.status.get("labels") or {}),
    )


def _import(obj: Object) -> pb.ImportInfo:
    return pb.ImportInfo(
        namespace=obj.namespace,
        name=obj.name,
        port=int(obj.spec["port"]),
        target_port=int(obj.spec.get("targetPort") or 0) if is_true(obj.status, S.IMPORT_TARGET_PORT_VALID) else 0,
        vip=str(obj.status.get("vip") or ""),
        lb_scheme=obj.spec.get("lbScheme") or S.DEFAULT_LB_SCHEME,
        sources=[pb.ImportSource(peer=s["peer"], export_name=s["exportName"], export_namespace=s["exportNamespace"])
                 for s in obj.spec["sources"]],
        labels=dict(obj.labels),
        protocol=_protocol(obj),
    )


def _protocol(obj: Object) -> str:
    """spec.protocol (TCP, UDP or TCPAndUDP); absent: TCP."""
    return str(obj.spec.get("protocol") or S.PROTOCOL_TCP)


def _policy(obj: Object) -> pb.PolicyInfo:
    return pb.PolicyInfo(privileged=obj.kind == S.PRIVILEGED_ACCESS_POLICY.kind, namespace=obj.namespace,
                         name=obj.name, spec_json=json.dumps(obj.spec, sort_keys=True))


def gateway_view(state: DesiredState) -> pb.Snapshot:
    return pb.Snapshot(
        peer_name=state.peer_name,
        peer_labels=dict(state.peer_labels),
        peers=[_peer(p, state.reachable) for p in state.peers if p.namespace == state.system_namespace],
        exports=[pb.ExportInfo(namespace=e.namespace, name=e.name, target_host=t.host, port=int(e.spec["port"]),
                               labels=dict(e.labels), valid=t.valid, protocol=_protocol(e))
                 for e, t in state.exports],
        imports=[_import(i) for i in state.imports],
        policies=[_policy(p) for p in state.policies],
        token_key=state.token_key,
    )


def agent_view(state: DesiredState, node: str) -> pb.Snapshot:
    return pb.Snapshot(
        peer_name=state.peer_name,
        peer_labels=dict(state.peer_labels),
        imports=[_import(i) for i in state.imports],
        workloads=[pb.WorkloadInfo(cgroup=w.spec["cgroup"], namespace=w.namespace, name=w.name,
                                   service_account=w.spec.get("serviceAccount") or "default",
                                   labels=dict(w.labels), node=w.spec.get("node") or "")
                   for w in state.workloads if not w.spec.get("node") or w.spec.get("node") == node],
        gateway_agent_address=state.gateway_agent_address,
    )


class Versioner:
    """Stamps a view with a new version only when its content changed."""

    def __init__(self, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        self._next = int(clock() * 1000)
        self._last: dict[str, tuple[bytes, int]] = {}

    def stamp(self, audience: str, view: pb.Snapshot) -> pb.Snapshot:
        content = view.SerializeToString(deterministic=True)
        last = self._last.get(audience)
        if last and last[0] == content:
            version = last[1]
        else:
            self._next += 1
            version = self._next
            self._last[audience] = (content, version)
        out = pb.Snapshot()
        out.CopyFrom(view)
        out.version = version
        out.generated_unix_ms = int(time.time() * 1000)
        return out

    def forget(self, audience: str) -> None:
        self._last.pop(audience, None)
