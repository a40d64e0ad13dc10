"""Test-session behaviour shared by every test directory.

SIGTERM (a CI timeout, `kill`) is turned into KeyboardInterrupt in the pytest process itself, so
pytest still runs the fixture finalizers that stop processes and remove namespaces, cgroups and BPF
attachments. A forked child of pytest (pyroute2 runs namespace work in forks and stops them with
SIGTERM) just exits: it must never run the session's finalizers, which would remove the parent's
namespaces.
"""

from __future__ import annotations

import os
import signal

_MAIN_PID = os.getpid()


def _interrupt(signum: int, frame: object) -> None:
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: object) -> None:
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    signal.signal(signal.SIGTERM, _interrupt)
