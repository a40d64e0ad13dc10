"""Test-session behaviour shared by every test directory.

SIGTERM (a CI timeout, `kill`) is turned into KeyboardInterrupt, so pytest still runs the fixture
finalizers that stop processes and remove namespaces, cgroups and BPF attachments.
"""

from __future__ import annotations

import signal


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: object) -> None:
    signal.signal(signal.SIGTERM, _interrupt)
