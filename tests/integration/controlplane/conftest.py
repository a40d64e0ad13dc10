"""A real control-plane process (standalone, SQLite) in a temporary directory, on a unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane import pki
from controlplane.api.client import ControlPlaneClient, Endpoint
from fabric.process import spawn

BIN = Path(sys.executable).parent


class RunningControlPlane:
    def __init__(self, tmp: Path, name: str = "east") -> None:
        self.tmp = tmp
        self.name = name
        pki.create_fabric(tmp / "certs")
        self.certs = pki.create_peer_cert(tmp / "certs", name)
        self.socket = tmp / "api.sock"
        self.proc = None

    def start(self, *extra: str) -> None:
        argv = [str(BIN / "clusterlink-controlplane"), "--certs", str(self.certs),
                "--store", f"sqlite://{self.tmp / 'state.db'}", "--api-listen", f"unix:{self.socket}",
                "--metrics-listen", "none", "--log-format", "text", "--probe-timeout", "1", *extra]
        self.proc = spawn(argv, log_path=self.tmp / "controlplane.log")
        self.proc.wait_unix(self.socket, timeout=20)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def endpoint(self, token: str | None = None) -> Endpoint:
        return Endpoint(address=f"unix:{self.socket}",
                        token=token if token is not None else (self.tmp / "admin.token").read_text().strip())

    @property
    def join_token(self) -> str:
        return (self.tmp / "join.token").read_text().strip()

    def call(self, fn, token: str | None = None):  # type: ignore[no-untyped-def]
        async def go():  # type: ignore[no-untyped-def]
            async with ControlPlaneClient(self.endpoint(token)) as c:
                return await fn(c)

        return asyncio.run(go())

    def apply(self, text: str) -> list[str]:
        return self.call(lambda c: c.apply(text)).results

    def get(self, kind: str, name: str = "", namespace: str = "") -> list[dict]:
        return json.loads(self.call(lambda c: c.get(kind, namespace, name)))

    def cli(self, *args: str, input: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run the `clusterlink` command against this control plane."""
        env = dict(os.environ, CLUSTERLINK_CONTROLPLANE=f"unix:{self.socket}",
                   CLUSTERLINK_TOKEN_FILE=str(self.tmp / "admin.token"))
        env.pop("CLUSTERLINK_TOKEN", None)
        return subprocess.run([str(BIN / "clusterlink"), *args], env=env, input=input, capture_output=True,
                              text=True, timeout=timeout)


@pytest.fixture
def controlplane(tmp_path):
    cp = RunningControlPlane(tmp_path)
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()
