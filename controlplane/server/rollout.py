"""Which snapshot each watcher has put in force, and waiting for a change to reach them all (pure
asyncio, no grpc).

A watcher that names an `instance` in its WatchRequest confirms every snapshot it applied (Ack).
`Rollouts.wait(targets, timeout)` returns once every such watcher confirmed at least the version
`targets(role, node)` gives it, or when the timeout passed: then the result names the ones that
have not, and what they hold. A watcher whose stream closes stops being waited for (a gateway that
reconnects gets the latest snapshot before it serves again). Watchers without an instance (older
versions of ours) are counted as `silent` and not waited for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Watcher:
    instance: str
    role: str  # "gateway" | "agent"
    node: str
    acked: int  # the highest version it confirmed


@dataclass(frozen=True)
class RolloutResult:
    waited: bool
    complete: bool
    confirmed: int
    pending: tuple[str, ...] = ()
    silent: int = 0
    gateway_version: int = 0


@dataclass
class Rollouts:
    _watchers: dict[str, Watcher] = field(default_factory=dict)
    _silent: int = 0
    _tick: asyncio.Future[None] | None = None  # resolved (and replaced) on every change

    def _next_change(self) -> asyncio.Future[None]:
        if self._tick is None:
            self._tick = asyncio.get_running_loop().create_future()
        return self._tick

    def _notify(self) -> None:
        """Synchronous, so that it is safe in the `finally` of a cancelled stream."""
        tick, self._tick = self._tick, None
        if tick is not None and not tick.done():
            tick.set_result(None)

    # -- the watch streams -------------------------------------------------------------------------
    def open(self, instance: str, role: str, node: str, known_version: int) -> bool:
        """A Watch stream opened; False if another open stream has the same instance (it is then
        counted as silent: an instance must identify one stream)."""
        if not instance or instance in self._watchers:
            self._silent += 1
            return False
        self._watchers[instance] = Watcher(instance, role, node, known_version)
        return True

    def close(self, instance: str, acknowledged: bool) -> None:
        if acknowledged:
            self._watchers.pop(instance, None)
        else:
            self._silent -= 1
        self._notify()  # a waiter may no longer need to wait for it

    def ack(self, instance: str, version: int) -> bool:
        watcher = self._watchers.get(instance)
        if watcher is None:
            return False
        if version > watcher.acked:
            watcher.acked = version
            self._notify()
        return True

    # -- management calls --------------------------------------------------------------------------
    async def wait(self, targets: Callable[[str, str], int], timeout: float, *, gateway_version: int = 0
                   ) -> RolloutResult:
        """Wait until every acknowledging watcher holds at least `targets(role, node)` (0: nothing
        to wait for), at most `timeout` seconds."""
        deadline = time.monotonic() + max(timeout, 0.0)

        def behind() -> list[tuple[Watcher, int]]:
            out = []
            for w in self._watchers.values():
                target = targets(w.role, w.node)
                if target and w.acked < target:
                    out.append((w, target))
            return out

        while behind():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(asyncio.shield(self._next_change()), left)
            except TimeoutError:
                break
        late = behind()
        return RolloutResult(
            waited=True, complete=not late, confirmed=len(self._watchers) - len(late),
            pending=tuple(sorted(f"{w.instance}: holds snapshot {w.acked}, the change is in {t}" for w, t in late)),
            silent=self._silent, gateway_version=gateway_version)

    def __len__(self) -> int:
        return len(self._watchers)

    def watchers(self) -> list[Watcher]:
        """The acknowledging watchers now (copies)."""
        return [Watcher(w.instance, w.role, w.node, w.acked) for w in self._watchers.values()]

    @property
    def silent(self) -> int:
        return self._silent
