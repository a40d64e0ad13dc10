"""This peer as its control plane sees it (pure): what `clusterlink status` prints and `clusterlink
diagnose` judges. Built from the store's objects and their conditions, the published snapshots,
the watchers of the snapshot streams and the peer certificate."""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Iterable, Mapping
from typing import Any

from controlplane.model import schema as S
from controlplane.model.objects import Object

from .rollout import Watcher


def _conditions(obj: Object) -> dict[str, dict[str, str]]:
    out = {}
    for cond in (obj.status or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type"):
            out[str(cond["type"])] = {"status": str(cond.get("status", "Unknown")),
                                      "reason": str(cond.get("reason", "")), "message": str(cond.get("message", ""))}
    return out


def build_status(*, peer: str, labels: Mapping[str, str], certificate_not_after: _dt.datetime, store_kind: str,
                 leader: bool, gateway_version: int, generated_unix_ms: int, watchers: Iterable[Watcher],
                 silent_watchers: int, agent_versions: Mapping[str, int], peers: Iterable[Object],
                 exports: Iterable[Object], imports: Iterable[Object], policies: Iterable[Object],
                 now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    days_left = (certificate_not_after.timestamp() - now) / 86400
    watcher_rows = []
    for w in sorted(watchers, key=lambda w: (w.role, w.node, w.instance)):
        target = gateway_version if w.role == "gateway" else agent_versions.get(w.node, 0)
        watcher_rows.append({"instance": w.instance, "role": w.role, "node": w.node, "holds": w.acked,
                             "current": bool(target) and w.acked >= target})
    policy_counts: dict[str, int] = {}
    for p in policies:
        policy_counts[p.kind] = policy_counts.get(p.kind, 0) + 1
    return {
        "peer": peer,
        "labels": dict(labels),
        "certificate": {"not_after": certificate_not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "days_left": round(days_left, 1)},
        "store": store_kind,
        "leader": leader,
        "snapshot": {"gateway_version": gateway_version,
                     "age_seconds": round(now - generated_unix_ms / 1000, 1) if generated_unix_ms else None},
        "watchers": watcher_rows,
        "silent_watchers": silent_watchers,
        "peers": [{"name": p.name, "gateways": [f"{g['host']}:{g['port']}" for g in p.spec.get("gateways", [])],
                   "reachable": _conditions(p).get(S.PEER_REACHABLE, {}).get("status", "Unknown"),
                   "conditions": _conditions(p)} for p in sorted(peers, key=lambda o: o.name)],
        "exports": [{"namespace": e.namespace, "name": e.name, "conditions": _conditions(e)}
                    for e in sorted(exports, key=lambda o: (o.namespace, o.name))],
        "imports": [{"namespace": i.namespace, "name": i.name, "port": i.spec.get("port"),
                     "targetPort": i.spec.get("targetPort"), "vip": (i.status or {}).get("vip", ""),
                     "conditions": _conditions(i)}
                    for i in sorted(imports, key=lambda o: (o.namespace, o.name))],
        "policies": policy_counts,
    }
