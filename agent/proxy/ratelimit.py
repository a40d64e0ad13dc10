"""A log call that is emitted at most once per interval, reporting how many were suppressed.

For errors that one misbehaving peer can trigger at line rate: the first one is logged (with its
traceback, if given), the rest of the interval only counted."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._next = 0.0
        self._suppressed = 0

    def log(self, level: int, msg: str, *args: object, exc_info: bool | BaseException = False) -> None:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        if self._suppressed:
            msg = f"{msg} ({self._suppressed} similar messages suppressed in the last {self._interval:g} s)"
            self._suppressed = 0
        self._next = now + self._interval
        self._logger.log(level, msg, *args, exc_info=exc_info)
