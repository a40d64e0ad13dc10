"""Rate-limited logging: one line per kind of event per interval, with the count of the others.

A listener facing garbage or a scan must not flood the log: `LogThrottle.log(key, ...)` writes
the first event of a key, then at most one per `interval`, saying how many were not written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from controlplane.api.logsetup import printable


class LogThrottle:
    def __init__(self, logger: logging.Logger, *, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 1024) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._state: dict[str, tuple[float, int]] = {}

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: BaseException | None = None,
            extra: Mapping[str, Any] | None = None) -> bool:
        """Log unless an event of `key` was logged less than `interval` ago; True when written.
        `extra`: structured fields (`logsetup.fields(...)`)."""
        now = self._clock()
        last, skipped = self._state.get(key, (float("-inf"), 0))
        if now - last < self._interval:
            self._state[key] = (last, skipped + 1)
            return False
        if len(self._state) >= self._max_keys and key not in self._state:
            self._state.clear()
        self._state[key] = (now, 0)
        if skipped:
            msg = f"{msg} ({skipped} similar events in the last {self._interval:g} s not logged)"
        self._logger.log(level, msg, *args, exc_info=exc_info, extra=extra)
        return True

    def info(self, key: str, msg: str, *args: object, extra: Mapping[str, Any] | None = None) -> bool:
        return self.log(logging.INFO, key, msg, *args, extra=extra)

    def warning(self, key: str, msg: str, *args: object, extra: Mapping[str, Any] | None = None) -> bool:
        return self.log(logging.WARNING, key, msg, *args, extra=extra)

    def error(self, key: str, msg: str, *args: object, exc_info: BaseException | None = None) -> bool:
        return self.log(logging.ERROR, key, msg, *args, exc_info=exc_info)


def attributes(attrs: Mapping[str, str], limit: int = 300) -> str:
    """Client attributes for a log line: `k=v, ...` in key order, cut at `limit` characters, anything
    unprintable (a remote peer sends them) as `?`."""
    text = printable(", ".join(f"{k}={v}" for k, v in sorted(attrs.items())) or "none known")
    return text if len(text) <= limit else text[:limit] + "..."
