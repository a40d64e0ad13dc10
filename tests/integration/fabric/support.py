"""Helpers for the fabric's integration tests: what they need from the machine, and workload shortcuts."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from fabric import Proc
from fabric.cgroups import DEFAULT_ROOT, is_cgroup2_mount
from fabric.places import PeerNet, Place, PodNet

WORKLOADS = [sys.executable, "-m", "fabric.workloads"]
REPO = Path(__file__).resolve().parents[3]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root: it creates network namespaces and cgroups"
    for tool in ("ip", "nsenter", "sysctl"):
        if shutil.which(tool) is None:
            return f"needs the `{tool}` command"
    if not is_cgroup2_mount(DEFAULT_ROOT):
        return f"needs cgroup v2 mounted at {DEFAULT_ROOT}"
    return None


MISSING = _missing()
privileged = [pytest.mark.privileged, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]


def start_server(where: Place, argv: list[str], log_dir: Path, *, banner: str = "listening on") -> Proc:
    """Spawn a workload server at `where` and wait for its banner."""
    log_path = log_dir / f"{where.netns}-{argv[0]}-{len(list(log_dir.glob('*.log')))}.log"
    proc = where.spawn(WORKLOADS + argv, log_path=log_path)
    proc.wait_log(banner, timeout=10)
    return proc


def http_echo(where: Place, name: str, port: int, log_dir: Path, *, host: str = "0.0.0.0") -> Proc:
    return start_server(where, ["http-echo", "--name", name, "--port", str(port), "--host", host], log_dir)


def http_get(client: Place, url: str, *, timeout: float = 3.0):
    return client.run(WORKLOADS + ["http-get", url, "--timeout", str(timeout)], timeout=timeout + 10)


def tcp_send(client: Place, host: str, port: int, nbytes: int) -> dict:
    result = client.run(
        WORKLOADS + ["tcp-send", "--host", host, "--port", str(port), "--bytes", str(nbytes)], timeout=60, check=True
    )
    return json.loads(result.stdout)


def endpoint(where: PodNet | PeerNet) -> str:
    return where.ip if isinstance(where, PodNet) else where.lan_ip
