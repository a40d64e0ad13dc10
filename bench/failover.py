"""The benchmark's failover section, on a fabric of its own: east imports `bench-failover` from west
and south (round-robin; each serves `http-echo` naming itself); east's client opens new connections
through the agent's VIP, four clients one after another each (`fabric.workloads http-load`), and west's gateway is
killed (kill -9), frozen (SIGSTOP) or cut off (its WAN packets dropped) a while in. Per repetition
and fault: the recovery time (from the fault until every new connection succeeds again at its usual
speed; `fabric.faults`) and the connections that failed. West is restored (restarted, continued,
healed) and serves again before the next run.

Everything is stopped by PID and removed when the fabric closes, also after a failure.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from bench.settings import Settings
from bench.world import ALLOW_ALL, manifest
from fabric.faults import FAULTS, before_fault, measure, recovery
from fabric.peer import ClusterLinkFabric, Peer, Pod
from fabric.workloads import EXIT_OK

log = logging.getLogger(__name__)

PORT = 8080
IMPORT = "bench-failover"
EXPORTERS = ("west", "south")
FAULTY = "west"
READY_TIMEOUT_S = 30.0

class FailoverWorld:
    def __init__(self, threads: int) -> None:
        self.fab = ClusterLinkFabric(gateway_workers=threads)
        self.peers: dict[str, Peer] = {}
        self.client: Pod | None = None
        self.url = ""

    def __enter__(self) -> FailoverWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fab.close()

    def start(self) -> None:
        fab = self.fab
        east = self.peers["east"] = fab.add_peer("east", labels={"region": "east"})
        self.client = east.add_pod("client", labels={"app": "bench-client"})
        servers = {}
        for name in EXPORTERS:
            peer = self.peers[name] = fab.add_peer(name, labels={"region": name})
            servers[name] = peer.add_pod("server", labels={"app": "bench-server"})
        fab.start(agents=False)
        east.start_agent("n1")
        for name in EXPORTERS:
            servers[name].serve_http_echo(PORT, name=name)
        fab.wait_reachable(timeout=READY_TIMEOUT_S)
        for name in EXPORTERS:
            self.peers[name].apply("---\n".join([
                manifest("LocalService", IMPORT, {"host": servers[name].ip}),
                manifest("Export", IMPORT, {"port": PORT}), ALLOW_ALL]))
            self.peers[name].wait_condition("Export", IMPORT, "ExportValid", timeout=READY_TIMEOUT_S)
        east.apply("---\n".join([manifest("Import", IMPORT, {"port": PORT, "sources": [
            {"peer": name, "exportName": IMPORT, "exportNamespace": "default"} for name in EXPORTERS]}), ALLOW_ALL]))
        self.url = f"http://{east.vip(IMPORT, timeout=READY_TIMEOUT_S)}:{PORT}/"

    def wait_both_serve(self) -> None:
        """Until both exporters answer (after a fault, the faulty one must be back)."""
        assert self.client is not None
        seen: set[str] = set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while seen != set(EXPORTERS):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {sorted(seen)} of {list(EXPORTERS)} answer on {self.url} after "
                                   f"{READY_TIMEOUT_S:g} s\n{self.fab.logs()}")
            out = self.client.http_get(self.url, timeout=5)
            if out.returncode == EXIT_OK:
                seen.add(json.loads(out.stdout)["server"])
            else:
                time.sleep(0.2)


def run_failover(settings: Settings, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """One record per repetition and fault (see the module docstring)."""
    records = []
    with FailoverWorld(settings.threads) as world:
        world.start()
        assert world.client is not None
        for rep in range(settings.failover_repetitions):
            for fault in FAULTS:
                world.wait_both_serve()
                outcomes, fault_at = measure(world.client, world.url, world.peers[FAULTY], fault,
                                             load_s=settings.failover_load_s, fault_after=settings.failover_fault_after_s)
                r = recovery(outcomes, fault_at)
                record = {"fault": fault, "repetition": rep, "recovery_ms": round(r.recovery * 1000, 1),
                          "failed": r.failed, "failed_after_fault": r.failed_new,
                          "disturbed": r.disturbed, "slow_threshold_ms": round(r.slow * 1000, 1),
                          "connections_after_fault": r.connections,
                          "connections_before_fault": len(before_fault(outcomes, fault_at)),
                          "servers_after_recovery": dict(r.servers_after), "disturbances": r.disturbances,
                          "failures": r.failures}
                records.append(record)
                progress(f"[{rep + 1}/{settings.failover_repetitions}] failover {fault:<10} recovery "
                         f"{record['recovery_ms']} ms, failed {r.failed} ({record['failed_after_fault']} started "
                         f"after the fault), {r.connections} connections after it")
        world.wait_both_serve()
    return records

