"""Helpers for the conformance scenarios: objects as YAML, and accessing an import with retries.

The original project's e2e suite retries an access for a while (policies and statuses propagate
asynchronously); so do we, bounded, and a failure reports the last outcome and every process log.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping

import yaml

from fabric.peer import ClusterLinkFabric, Peer, Pod
from fabric.workloads import EXIT_OK

ECHO_PORT = 8080
API = "clusterlink.net/v1alpha1"


def doc(kind: str, name: str, spec: Mapping, *, namespace: str | None = "default",
        labels: Mapping[str, str] | None = None) -> str:
    meta: dict = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return yaml.safe_dump({"apiVersion": API, "kind": kind, "metadata": meta, "spec": dict(spec)}, sort_keys=False)


def policy(name: str, action: str, *, src: Mapping[str, str] | None = None, dst: Mapping[str, str] | None = None,
           src_expr: Iterable[Mapping] = (), privileged: bool = False, namespace: str = "default") -> str:
    def selector(labels, exprs) -> dict:  # type: ignore[no-untyped-def]
        sel: dict = {}
        if labels:
            sel["matchLabels"] = dict(labels)
        if exprs:
            sel["matchExpressions"] = [dict(e) for e in exprs]
        return {"workloadSelector": sel}

    spec = {"action": action, "from": [selector(src, list(src_expr))], "to": [selector(dst, [])]}
    if privileged:
        return doc("PrivilegedAccessPolicy", name, spec, namespace=None)
    return doc("AccessPolicy", name, spec, namespace=namespace)


def allow_all(name: str = "allow-all") -> str:
    return policy(name, "allow")


def import_doc(name: str, sources: Iterable[tuple[str, str]], *, lb: str | None = None, port: int = ECHO_PORT,
               target_port: int | None = None, labels: Mapping[str, str] | None = None) -> str:
    spec: dict = {"port": port, "sources": [{"peer": p, "exportName": e, "exportNamespace": "default"}
                                             for p, e in sources]}
    if lb:
        spec["lbScheme"] = lb
    if target_port:
        spec["targetPort"] = target_port
    return doc("Import", name, spec, labels=labels)


def get_once(pod: Pod, url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(exit code, echoing server's name or the error text) of one GET on a new connection."""
    out = pod.http_get(url, timeout=timeout)
    if out.returncode != EXIT_OK:
        return out.returncode, (out.stdout + out.stderr).strip()
    try:
        return EXIT_OK, json.loads(out.stdout)["server"]
    except (ValueError, KeyError):
        return EXIT_OK, out.stdout.strip()


class Access:
    """Reach an Import of `peer` from `pod`, through its VIP (the agent path) or its target port."""

    def __init__(self, fab: ClusterLinkFabric, peer: Peer, pod: Pod, name: str, *, via: str = "vip") -> None:
        self.fab, self.peer, self.pod, self.name, self.via = fab, peer, pod, name, via

    def url(self) -> str:
        if self.via == "vip":
            vip = self.peer.vip(self.name)
            return f"http://[{vip}]:{ECHO_PORT}/" if ":" in vip else f"http://{vip}:{ECHO_PORT}/"
        return f"http://{self.peer.lan_ip}:{self.peer.target_port(self.name)}/"

    def once(self) -> tuple[int, str]:
        return get_once(self.pod, self.url())

    def expect(self, server: str | None, *, timeout: float = 15.0) -> None:
        """Retry until the answer comes from `server` (None: until the access fails)."""
        deadline = time.monotonic() + timeout
        last: tuple[int, str] = (-1, "")
        while time.monotonic() < deadline:
            last = self.once()
            if (server is None and last[0] != EXIT_OK) or (server is not None and last == (EXIT_OK, server)):
                return
            time.sleep(0.2)
        want = f"an answer from {server}" if server else "a refused connection"
        raise AssertionError(f"expected {want} on {self.peer.name}/{self.name}, last outcome {last}\n"
                             f"{self.fab.logs()}")

    def servers(self, n: int) -> list[str]:
        """The servers answering n consecutive new connections (each must succeed)."""
        out = []
        for _ in range(n):
            code, server = self.once()
            assert code == EXIT_OK, f"access failed: {server}\n{self.fab.logs()}"
            out.append(server)
        return out


class Prober:
    """One GET on a new connection the moment `once()` is called: a long-running `http-probe` in
    the pod, fed through a FIFO (starting a process per connection takes longer than the window a
    test of "in force on return" must see). Use as a context manager."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self._seq = itertools.count(1)
        self.fifo = access.peer.dir / f"clprobe-{access.pod.name}.fifo"
        if self.fifo.exists():
            self.fifo.unlink()
        os.mkfifo(self.fifo)
        self.proc = access.pod.spawn([sys.executable, "-m", "fabric.workloads", "http-probe", access.url(),
                                      "--commands", str(self.fifo)], name="http-probe")
        self.proc.wait_log("^http-probe ready$", timeout=20)
        self._writer = open(self.fifo, "w", encoding="utf-8")  # returns once the probe opened it

    def once(self, timeout: float = 15.0) -> tuple[int, str]:
        n = str(next(self._seq))
        self._writer.write(n + "\n")
        self._writer.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.proc.log_text().splitlines():
                if line.startswith("{"):
                    result = json.loads(line)
                    if result["line"] == n:
                        return result["code"], result["server"]
            time.sleep(0.01)
        raise AssertionError(f"http-probe gave no result for probe {n} in {timeout:g}s:\n{self.proc.log_tail()}")

    def __enter__(self) -> Prober:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()  # end of file: the probe exits
        try:
            self.proc.wait(5.0)
        except Exception:  # noqa: BLE001 - whatever it is, stop it
            self.proc.stop()
        self.fifo.unlink(missing_ok=True)
