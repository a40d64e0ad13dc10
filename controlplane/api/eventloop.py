"""Which asyncio event loop a process runs on: `--event-loop auto|uvloop|asyncio`.

uvloop (libuv, written in C) dispatches reader/writer callbacks, timers and transports with less
Python per event than the standard loop; on the node proxy's relay it cut the CPU per relayed
request/response by about a third (docs/internals.md, Agent). `auto` (the default) uses uvloop when
it is installed and the standard loop otherwise; `uvloop` insists on it (a clear error when it is
missing); `asyncio` is the standard loop, for debugging or to rule the loop out.

    add_flag(parser)                         --event-loop, also $CLUSTERLINK_EVENT_LOOP
    resolve(choice) -> "uvloop" | "asyncio"  what `choice` means on this machine; ValueError if impossible
    run(coro, choice)                        asyncio.run on that loop

For performance work, `CLUSTERLINK_PROFILE_DIR=<dir>` runs the loop under cProfile and writes
`<dir>/<program>-<pid>.prof` when it ends (read it with `python -m pstats`). Off by default: the
profiler roughly doubles the CPU of every Python call.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from controlplane.api.flags import add as add_env_flag

CHOICES = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


def add_flag(parser: argparse.ArgumentParser) -> None:
    add_env_flag(parser, "--event-loop", default="auto", choices=CHOICES,
                 help="Event loop: uvloop (faster; needs the uvloop package), asyncio (the standard loop), or "
                      "auto: uvloop when installed")


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> str:
    if choice not in CHOICES:
        raise ValueError(f"--event-loop must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    if choice == "uvloop" and not uvloop_available():
        raise ValueError("--event-loop uvloop: the uvloop package is not installed in this Python "
                         "(pip install uvloop, or use --event-loop asyncio)")
    return choice


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for `asyncio.Runner` (None: the standard loop)."""
    if resolve(choice) == "uvloop":
        import uvloop  # noqa: PLC0415 - optional dependency, imported only when chosen

        return uvloop.new_event_loop
    return None


def run(coro: Coroutine[Any, Any, T], choice: str) -> T:
    """Like `asyncio.run(coro)`, on the loop `choice` names (ValueError before anything runs if it
    cannot be had)."""
    profile_dir = os.environ.get("CLUSTERLINK_PROFILE_DIR")
    try:
        factory = loop_factory(choice)
        if profile_dir:  # found out now, not after hours of running, that the profile cannot be written
            os.makedirs(profile_dir, exist_ok=True)
            if not os.access(profile_dir, os.W_OK):
                raise ValueError(f"CLUSTERLINK_PROFILE_DIR={profile_dir}: not writable")
    except OSError as exc:
        coro.close()
        raise ValueError(f"CLUSTERLINK_PROFILE_DIR={profile_dir}: {exc.strerror or exc}") from None
    except BaseException:
        coro.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        if not profile_dir:
            return runner.run(coro)
        import cProfile  # noqa: PLC0415 - only for profiling runs

        profiler = cProfile.Profile()
        try:
            return profiler.runcall(runner.run, coro)
        finally:
            main = sys.modules.get("__main__")
            spec = getattr(main, "__spec__", None)  # `python -m pkg.mod`: the module's name
            program = spec.name if spec is not None else os.path.basename(sys.argv[0]) or "python"
            profiler.dump_stats(os.path.join(profile_dir, f"{program}-{os.getpid()}.prof"))


def running_loop_name() -> str:
    """"uvloop" or "asyncio": what the running loop is (for logs and metrics)."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
