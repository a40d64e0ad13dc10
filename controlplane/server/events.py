"""What the control plane tells users on their objects: Kubernetes Events (pure decisions).

`kubectl describe import web` shows why an Import has no port, `kubectl get events` that a peer
went down. The control plane records an Event when:

- a condition of an Import or Export turns False, or changes its reason while False (Warning, the
  condition's reason: a target-port conflict, no Service, an Export without its service), and when
  it turns True again after that (Normal);
- a Peer becomes unreachable by heartbeats (Warning `PeerUnreachable`) or reachable again after
  it was not (Normal `PeerReachable`); the first heartbeat after a start records nothing when the
  peer answers;
- the store rejects an object (any ClusterLink kind, policies included) as malformed (Warning
  `Rejected`, with the field and the problem);
- a gateway's policies deny connections (Warning `PolicyDenied` on the Import for egress, on the
  Export for ingress, naming the peer and the policy; the gateways report counts every
  --denial-report-interval, and repeats are one Event with a growing count).

Only in Kubernetes mode (`store.kube_events.KubeEvents` writes them; a standalone control plane
has nowhere to put them and logs the same facts), and only by the leader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from controlplane.model.conditions import get_condition
from controlplane.model.objects import Object

NORMAL = "Normal"
WARNING = "Warning"

POLICY_DENIED = "PolicyDenied"
PEER_UNREACHABLE = "PeerUnreachable"
PEER_REACHABLE = "PeerReachable"
REJECTED = "Rejected"


@dataclass(frozen=True)
class ObjectRef:
    """The object an Event is about."""

    kind: str
    namespace: str  # "" for a cluster-scoped object
    name: str
    uid: str = ""

    @classmethod
    def of(cls, obj: Object) -> ObjectRef:
        return cls(obj.kind, obj.namespace, obj.name, obj.uid)


@dataclass(frozen=True)
class EventNote:
    type: str  # NORMAL or WARNING
    reason: str  # CamelCase, what happened
    message: str
    action: str  # what the control plane was doing (events.k8s.io/v1 `action`)


class Events(Protocol):
    def record(self, ref: ObjectRef, note: EventNote, count: int = 1) -> None:
        """Record `count` occurrences (never blocks, never raises: Events are best effort)."""


class NoEvents:
    """Standalone mode: no Events (the log has the same facts)."""

    def record(self, ref: ObjectRef, note: EventNote, count: int = 1) -> None:
        return None


def condition_note(old_status: Mapping[str, Any], new_status: Mapping[str, Any], type_: str) -> EventNote | None:
    """The Event for a condition's change from `old_status` to `new_status`, if it deserves one."""
    new = get_condition(new_status, type_)
    if new is None:
        return None
    old = get_condition(old_status, type_) or {}
    value, was = new.get("status"), old.get("status")
    reason = str(new.get("reason") or type_)
    message = f"{type_}: {new.get('message') or reason}"
    if value == "False" and (was != "False" or old.get("reason") != new.get("reason")):
        return EventNote(WARNING, reason, message, "Reconcile")
    if value == "True" and was == "False":
        return EventNote(NORMAL, reason, message, "Reconcile")
    return None


def peer_note(peer: str, reachable: bool, before: bool | None) -> EventNote | None:
    """The Event for a heartbeat verdict `reachable` after `before` (None: the first one)."""
    if not reachable and before is not False:
        return EventNote(WARNING, PEER_UNREACHABLE, f"heartbeats to peer {peer} failed: new connections go to "
                         "other sources of the Imports it serves", "Heartbeat")
    if reachable and before is False:
        return EventNote(NORMAL, PEER_REACHABLE, f"peer {peer} answers heartbeats again", "Heartbeat")
    return None


def denial_note(direction: str, peer: str, policy: str) -> tuple[str, EventNote] | None:
    """(the kind of object it goes on, the Event) for denials a gateway reported; None when the
    direction is not one we know."""
    if direction == "egress":
        return "Import", EventNote(WARNING, POLICY_DENIED, f"connections to peer {peer} denied by policy "
                                   f"{policy} (egress)", "Authorize")
    if direction == "ingress":
        return "Export", EventNote(WARNING, POLICY_DENIED, f"connections from peer {peer} denied by policy "
                                   f"{policy} (ingress)", "Authorize")
    return None


def rejected_note(why: str) -> EventNote:
    return EventNote(WARNING, REJECTED, f"ignored until corrected: {why}", "Validate")
