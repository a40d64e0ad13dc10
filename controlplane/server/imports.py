"""Import reconciliation core: target-port leases and (standalone) VIP leases, as pure functions.

Given every Import, decide for each its gateway target port (explicit or auto-leased from
[1024, 49152), ClusterLink's range), its service address (VIP) and its two conditions. Older
Imports keep what they hold; a newer Import asking for a taken port gets
`ImportTargetPortValid=False`. Deterministic for a given input and random source.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controlplane.model import schema as S
from controlplane.model.objects import Object, ObjectKey

PORT_RANGE = (1024, 49152)  # [low, high)


@dataclass(frozen=True)
class ConditionValue:
    ok: bool
    reason: str
    message: str


@dataclass(frozen=True)
class ImportPlan:
    key: ObjectKey
    target_port: int  # 0 when no valid port
    write_back: bool  # spec.targetPort was unset and we leased one: write it into the spec
    port_condition: ConditionValue
    vip: str  # "" when none
    service_condition: ConditionValue


def _age_key(obj: Object) -> tuple:
    return (obj.creation_timestamp or "~", obj.resource_version, obj.namespace, obj.name)


class VipPool:
    """Addresses of a CIDR range handed to Imports (standalone mode: no Kubernetes ClusterIPs)."""

    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.ip_network(cidr, strict=True)
        if self.network.num_addresses < 4:
            raise ValueError(f"VIP range {cidr} is too small")

    def contains(self, address: str) -> bool:
        try:
            return ipaddress.ip_address(address) in self.network and address not in self._unusable()
        except ValueError:
            return False

    def _unusable(self) -> set[str]:
        return {str(self.network.network_address), str(self.network.broadcast_address)}

    def first_free(self, taken: set[str]) -> str | None:
        for host in self.network.hosts():
            text = str(host)
            if text not in taken:
                return text
        return None


def plan_imports(imports: Iterable[Object], *, reserved: Mapping[int, str], vip_pool: VipPool | None,
                 rng: random.Random, port_range: tuple[int, int] = PORT_RANGE) -> list[ImportPlan]:
    """Plan every Import. `reserved` maps ports the gateway itself uses to what uses them."""
    ordered = sorted(imports, key=_age_key)
    ports: dict[int, ObjectKey] = {}
    vips: dict[str, ObjectKey] = {}
    plans: dict[ObjectKey, ImportPlan] = {}
    low, high = port_range

    # Explicit ports first (oldest wins), so that an auto lease never steals a port someone asked for.
    wanted: dict[ObjectKey, int] = {}
    for imp in ordered:
        port = int(imp.spec.get("targetPort") or 0)
        if port:
            wanted[imp.key] = port
    conflicts: dict[ObjectKey, str] = {}
    for imp in ordered:
        port = wanted.get(imp.key)
        if not port:
            continue
        if port in reserved:
            conflicts[imp.key] = f"target port {port} is used by the gateway's {reserved[port]}"
        elif port in ports:
            other = ports[port]
            conflicts[imp.key] = f"target port {port} is already leased by import {other.namespace}/{other.name}"
        else:
            ports[port] = imp.key

    # Keep existing VIPs (oldest wins), then hand out new ones.
    if vip_pool is not None:
        for imp in ordered:
            vip = str(imp.status.get("vip") or "")
            if vip and vip_pool.contains(vip) and vip not in vips:
                vips[vip] = imp.key

    for imp in ordered:
        write_back = False
        if imp.key in conflicts:
            target, port_cond = 0, ConditionValue(False, S.REASON_ERROR, conflicts[imp.key])
        elif imp.key in wanted:
            target = wanted[imp.key]
            port_cond = ConditionValue(True, S.REASON_LEASED, f"target port {target} leased")
        else:
            target = _lease(ports, reserved, rng, low, high)
            if target:
                ports[target] = imp.key
                write_back = True
                port_cond = ConditionValue(True, S.REASON_LEASED, f"target port {target} leased")
            else:
                port_cond = ConditionValue(False, S.REASON_ERROR, f"no free target port in [{low}, {high})")
        vip, service_cond = "", ConditionValue(True, S.REASON_VALID, "")
        if vip_pool is not None:
            held = [v for v, k in vips.items() if k == imp.key]
            if held:
                vip = held[0]
            else:
                free = vip_pool.first_free(set(vips))
                if free:
                    vips[free] = imp.key
                    vip = free
            if vip:
                service_cond = ConditionValue(True, S.REASON_VALID, f"service address {vip}:{imp.spec['port']}")
            else:
                service_cond = ConditionValue(False, S.REASON_ERROR,
                                              f"no free service address in {vip_pool.network}")
        plans[imp.key] = ImportPlan(imp.key, target, write_back, port_cond, vip, service_cond)
    return [plans[imp.key] for imp in ordered]


def _lease(ports: Mapping[int, ObjectKey], reserved: Mapping[int, str], rng: random.Random, low: int,
           high: int) -> int:
    span = high - low
    if len(ports) + len(reserved) >= span:
        return 0
    for _ in range(64):
        port = rng.randrange(low, high)
        if port not in ports and port not in reserved:
            return port
    for port in range(low, high):  # dense table: scan
        if port not in ports and port not in reserved:
            return port
    return 0
