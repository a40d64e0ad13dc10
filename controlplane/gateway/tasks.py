"""The background and per-connection tasks of a worker, owned by its `asyncio.TaskGroup`.

`TaskSet.spawn(coro, name)` starts a named task in the group; if the coroutine raises (a bug:
handlers classify their own errors), the exception is logged with its traceback (rate-limited)
and counted, and the worker goes on, so that one connection never takes the others down.
`drain(timeout)` waits for the tasks to finish and cancels those still running after `timeout`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from .logthrottle import LogThrottle

log = logging.getLogger(__name__)


class TaskSet:
    def __init__(self, group: asyncio.TaskGroup, *, on_error: Callable[[str], None] | None = None) -> None:
        self._group = group
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_error = on_error
        self._throttle = LogThrottle(log, interval=10.0)

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str, kind: str = "task") -> asyncio.Task[Any]:
        task = self._group.create_task(self._guard(coro, name, kind), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, Any], name: str, kind: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._on_error is not None:
                self._on_error(kind)
            self._throttle.error(f"crash:{kind}", "Unexpected error in %s %s: %s", kind, name, exc, exc_info=exc)

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` for every task, then cancel the rest; returns how many were cancelled."""
        pending = set(self._tasks)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        return len(pending)

    def cancel_all(self) -> None:
        """Cancel every task (they finish at their next await)."""
        for task in list(self._tasks):
            task.cancel()
