"""Test-session behaviour shared by every test directory.

SIGTERM (a CI timeout, `kill`) is turned into KeyboardInterrupt in the pytest process itself, so
pytest still runs the fixture finalizers that stop processes and remove namespaces, cgroups and BPF
attachments. A forked child of pytest (pyroute2 runs namespace work in forks and stops them with
SIGTERM) just exits: it must never run the session's finalizers, which would remove the parent's
namespaces.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

_MAIN_PID = os.getpid()


def _interrupt(signum: int, frame: object) -> None:
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: object) -> None:
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _interrupt)


@pytest.fixture(params=["asyncio", "uvloop"])
def both_event_loops(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Runs the test once on the standard loop and once on uvloop (what the processes use by
    default): `asyncio.run` inside the test gets that loop. Use with
    `pytestmark = pytest.mark.usefixtures("both_event_loops")`."""
    if request.param == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        yield request.param
    finally:
        asyncio.set_event_loop_policy(None)
