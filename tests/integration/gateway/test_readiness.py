"""The gateway supervisor's probes: /healthz while it serves, /readyz 503 naming how many workers
run while one is being restarted, 200 again once it is back."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request

from .conftest import Fabric
from .hostile import children


def probe(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_readyz_follows_a_worker_restart(net: Fabric) -> None:
    gateway = net.west
    assert gateway.proc is not None
    port = gateway.metrics_port
    assert probe(port, "/healthz") == (200, "ok\n") and probe(port, "/readyz") == (200, "ready\n")
    workers = children(gateway.proc.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    seen = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        seen.append(probe(port, "/readyz"))
        if seen[-1][0] == 200 and any(s[0] == 503 for s in seen):
            break
        time.sleep(0.02)
    assert (503, "not ready: 1 of 2 workers running\n") in seen, seen[:5]
    assert seen[-1] == (200, "ready\n"), seen[-5:]
    assert probe(port, "/healthz")[0] == 200
    gateway.wait_ready(net.version["west"])
