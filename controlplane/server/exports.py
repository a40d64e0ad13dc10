"""Export validity, as a pure function: where the gateway connects, or why it cannot.

Kubernetes mode: without spec.host the target is the Service `<name>.<namespace>.svc.<cluster domain>`,
valid while that Service exists. Standalone mode: the `LocalService` of the same name stands in for
the Service. With spec.host the target is that host, not checked (ClusterLink's behaviour).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from controlplane.model import schema as S
from controlplane.model.objects import Object


@dataclass(frozen=True)
class ExportTarget:
    valid: bool
    host: str
    reason: str
    message: str


def resolve_export(export: Object, services: Mapping[tuple[str, str], str], *, kubernetes: bool = False,
                   cluster_domain: str = "cluster.local") -> ExportTarget:
    """`services` maps (namespace, name) of existing local services to their address."""
    host = str(export.spec.get("host") or "")
    if host:
        return ExportTarget(True, host, S.REASON_VERIFIED, f"target {host}:{export.spec['port']}")
    address = services.get((export.namespace, export.name))
    if address is None:
        return ExportTarget(False, "", S.REASON_ERROR,
                            f"export service '{export.namespace}/{export.name}' does not exist")
    if kubernetes:
        address = f"{export.name}.{export.namespace}.svc.{cluster_domain}"
    return ExportTarget(True, address, S.REASON_VERIFIED, f"target {address}:{export.spec['port']}")
