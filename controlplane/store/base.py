"""The store interface every backend implements, and the change events it emits.

Everything else in the control plane consumes a `Store` and never knows which backend it has.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from controlplane.model.objects import Object


class EventType(enum.Enum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class Event:
    type: EventType
    obj: Object


class StoreError(RuntimeError):
    """The backend failed (I/O, conflict); the message names the object."""


Listener = Callable[[Event], None]


class Store(Protocol):
    # True when every method may be called from any thread (listeners then run on the caller's
    # thread); False when the store belongs to the event loop's thread.
    thread_safe: bool

    def list(self, kind: str) -> list[Object]:
        """Every object of a kind (all namespaces), in a stable order."""

    def get(self, kind: str, namespace: str, name: str) -> Object | None: ...

    def apply(self, obj: Object) -> Object:
        """Create, or update spec/labels/annotations (the status is kept). Returns the stored object."""

    def update_spec(self, obj: Object, spec: Mapping[str, Any]) -> Object | None:
        """Controller write-back of a spec field (e.g. a leased targetPort); None if the object is gone."""

    def delete(self, kind: str, namespace: str, name: str) -> bool: ...

    def set_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        """Write the status when it differs from the stored one; True when it wrote."""

    def secret(self, name: str, size: int = 32) -> bytes:
        """Get, or create once, a random secret that survives restarts."""

    def token(self, name: str) -> str:
        """Get, or create once, a random text token that survives restarts (Kubernetes: a Secret
        that pods can mount)."""

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(event)` after every change; returns a function that unsubscribes."""

    def close(self) -> None: ...
