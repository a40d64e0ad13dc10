"""RouteCache: what a redirected connection resolves to, remembered per (VIP, port, client cgroup id).

Everything the agent sends its gateway for a connection (the gateway address and the encoded
preamble: Import, original destination, client attributes, credential, node) is a function of the
VIP:port the client connected to and of the client's cgroup, given the agent's table, credential and
(in Kubernetes) pod index. So the agent resolves a (VIP, port, cgroup id) once, and later
connections of the same client to the same service reuse the result: no cgroup path lookup, no
workload lookup, no JSON encoding per connection.

A cached route is valid for one *generation*: a value that the agent changes whenever the table,
the credential or the pod index changes. `get()` with another generation empties the cache first,
so nothing computed from an old table, credential or pod is ever handed out. cgroup ids are never
reused (64-bit kernfs ids) and a cgroup v2 directory cannot be renamed, so an id always stands for
the same cgroup path. The cache is bounded: at `max_entries` it is emptied and starts over.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

RouteKey = tuple[str, int, int]  # VIP, port, client cgroup id
DEFAULT_MAX_ENTRIES = 4096

T = TypeVar("T")


@dataclass
class RouteCache(Generic[T]):
    max_entries: int = DEFAULT_MAX_ENTRIES

    def __post_init__(self) -> None:
        if self.max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {self.max_entries}")
        self._routes: dict[RouteKey, T] = {}
        self._generation: Hashable = None

    def __len__(self) -> int:
        return len(self._routes)

    def get(self, key: RouteKey, generation: Hashable) -> T | None:
        if generation != self._generation:
            self._routes.clear()
            self._generation = generation
            return None
        return self._routes.get(key)

    def put(self, key: RouteKey, generation: Hashable, route: T) -> None:
        if generation != self._generation:
            self._routes.clear()
            self._generation = generation
        elif len(self._routes) >= self.max_entries and key not in self._routes:
            self._routes.clear()
        self._routes[key] = route
