"""The gateway's default --workers follows the CPU quota of its cgroup, in the real kernel."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

CPU_V1 = Path("/sys/fs/cgroup/cpu")
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def quota_cgroup():
    if not (CPU_V1 / "cpu.cfs_quota_us").exists():
        pytest.fail(f"this machine kind has the cgroup v1 cpu controller at {CPU_V1}; it is missing")
    path = CPU_V1 / f"cl-quota-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        (path / "cpu.cfs_period_us").write_text("100000")
        (path / "cpu.cfs_quota_us").write_text("50000")  # half a CPU
        yield path
    finally:
        for _ in range(50):
            try:
                path.rmdir()
                break
            except OSError:
                import time

                time.sleep(0.1)


def _workers_default(cgroup: Path | None) -> int:
    code = ("from controlplane.gateway.config import build_parser; "
            "print(build_parser().parse_args(['--certs', '/x', '--join-token-file', '/y']).workers)")
    argv = [sys.executable, "-c", code]
    if cgroup is not None:  # join the cgroup first, then exec the interpreter (same pid)
        argv = ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"', "sh", str(cgroup), *argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERLINK_")}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_half_a_cpu_of_quota_means_one_worker(quota_cgroup):
    assert _workers_default(None) == len(os.sched_getaffinity(0))  # no quota here: every CPU
    assert _workers_default(quota_cgroup) == 1
