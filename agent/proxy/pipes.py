"""PipePool: the pipes the splice relay moves bytes through, reused from one connection to the next.

A pipe costs three syscalls to make (pipe2, F_SETPIPE_SZ to 1 MiB, F_GETPIPE_SZ) and two to close,
about 8 us per pipe in CPython, two pipes per connection. The pool keeps up to `max_idle` of them
between connections. A pipe goes back to the pool only when it is *empty*: the relay's own count
says so and the kernel confirms it (FIONREAD on the read end answers 0); anything else is closed, so
bytes of one connection can never reach another. `close()` closes the idle pipes (pipes in use are
closed by whoever holds them when they are given back after it).

Not thread-safe: one pool per event loop.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import termios
from dataclasses import dataclass

log = logging.getLogger(__name__)

PIPE_SIZE = 1 << 20
DEFAULT_MAX_IDLE = 32


@dataclass(eq=False)
class Pipe:
    """Both ends of one pipe (non-blocking, close-on-exec) and its capacity in bytes."""

    r: int
    w: int
    capacity: int

    def close(self) -> None:
        r, w, self.r, self.w = self.r, self.w, -1, -1
        if r >= 0:
            os.close(r)
        if w >= 0:
            os.close(w)

    def buffered(self) -> int:
        """Bytes the kernel holds in the pipe (FIONREAD)."""
        out = array.array("i", [0])
        fcntl.ioctl(self.r, termios.FIONREAD, out, True)
        return out[0]


def make_pipe(size: int = PIPE_SIZE) -> Pipe:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
        except OSError as exc:
            # Unprivileged processes beyond fs.pipe-max-size / pipe-user-pages-soft: default size works.
            log.debug("Keeping the default pipe size (F_SETPIPE_SZ %d: %s).", size, exc)
        capacity = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    return Pipe(r, w, capacity)


class PipePool:
    def __init__(self, *, max_idle: int = DEFAULT_MAX_IDLE, size: int = PIPE_SIZE) -> None:
        if max_idle < 0:
            raise ValueError(f"max_idle must be 0 or more, not {max_idle}")
        self._max_idle = max_idle
        self._size = size
        self._idle: list[Pipe] = []
        self.made = 0      # pipes created (for tests and metrics)
        self.reused = 0    # pipes handed out again from the pool
        self.discarded = 0  # pipes given back that were not empty (closed, never reused)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def take(self) -> Pipe:
        if self._idle:
            self.reused += 1
            return self._idle.pop()
        self.made += 1
        return make_pipe(self._size)

    def give(self, pipe: Pipe, *, empty: bool) -> None:
        """Return a pipe after use. `empty` is the caller's count (nothing left in it); the kernel
        is asked as well. A pipe that is not empty, or that the pool has no room for, is closed."""
        if pipe.r < 0:
            return
        if empty and len(self._idle) < self._max_idle:
            left = pipe.buffered()
            if left == 0:
                self._idle.append(pipe)
                return
            log.error("A pipe given back as empty still holds %d bytes; closing it instead of reusing it.", left)
        if not empty:
            self.discarded += 1
        pipe.close()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for pipe in idle:
            pipe.close()
