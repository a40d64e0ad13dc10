"""One measurement on one path: wait for an idle machine, open a CPU window and an RSS sampler, run the
client (iperf3 or bench.client) inside the fabric, parse its answer into a `RunRecord`.

A failed run is recorded (ok False, the error) and the suite goes on; its figures count as missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.paths import SERVER_SIDE
from bench.records import CpuResult, IdleWait, RunRecord
from bench.sampling import CpuWindow, LoadSampler, wait_idle
from bench.settings import Settings
from bench.world import World


class Runner:
    def __init__(self, world: World, settings: Settings, fabric_cgroup: Path) -> None:
        self.world = world
        self.settings = settings
        self.fabric_cgroup = fabric_cgroup
        self.components = world.components()
        self.memory_components = world.memory_components()

    def _measure(self, section: str, path: str, rep: int, streams: int | None, service: str, argv: list[str],
                 timeout: float) -> tuple[subprocess.CompletedProcess[str] | None, str, CpuResult | None, IdleWait,
                                          dict[str, float]]:
        s = self.settings
        idle = wait_idle(s.idle_busy_fraction, s.idle_max_wait_s)
        window = CpuWindow({**self.components, "server": self.world.server_pid(path, service)}, self.fabric_cgroup)
        place = self.world.client_place(path)
        with LoadSampler(self.memory_components) as sampler:
            window.start()
            try:
                out = self.world.run_in(place, argv, timeout=timeout)
            except subprocess.TimeoutExpired:
                cpu = window.stop()
                return None, f"the client did not finish within {timeout:g} s", cpu, idle, sampler.stop()
            cpu = window.stop()
            peaks = sampler.stop()
        return out, "", cpu, idle, peaks

    def throughput(self, path: str, streams: int, rep: int) -> RunRecord:
        host, port = self.world.endpoint(path, "iperf")
        seconds = self.settings.iperf_seconds
        argv = ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-P", str(streams), "-J",
                "--connect-timeout", "5000"]
        out, error, cpu, idle, peaks = self._measure("throughput", path, rep, streams, "iperf", argv,
                                                     timeout=seconds + 30)
        figures: dict[str, float | None] = {"gbit_per_s": None}
        received = 0.0
        client: dict[str, object] = {}
        if out is not None:
            try:
                data = json.loads(out.stdout)
            except ValueError:
                data = {"error": f"iperf3 exit {out.returncode}: {out.stdout[-300:]} {out.stderr[-300:]}"}
            if data.get("error"):
                error = str(data["error"])
            else:
                end = data["end"]
                received = float(end["sum_received"]["bytes"])
                figures["gbit_per_s"] = round(end["sum_received"]["bits_per_second"] / 1e9, 3)
                client = {"received_bytes": received, "seconds": end["sum_received"]["seconds"],
                          "retransmits": end.get("sum_sent", {}).get("retransmits"),
                          "sender_cpu_pct": end.get("cpu_utilization_percent", {}).get("host_total"),
                          "receiver_cpu_pct": end.get("cpu_utilization_percent", {}).get("remote_total")}
        if error:
            self.world.restart_iperf_server(SERVER_SIDE[path])
        return RunRecord("throughput", path, rep, streams, not error, error, figures, received, cpu, idle, peaks,
                         client)

    def requests(self, section: str, path: str, rep: int) -> RunRecord:
        """`connections` (new connection per request, sequential), `parallel_connections` (the same,
        `parallel_clients` at once) or `latency` (ping-pong on one connection)."""
        s = self.settings
        host, port = self.world.endpoint(path, "echo")
        conn = section in ("connections", "parallel_connections")
        if section == "connections":
            mode, count, warmup, extra = "conn", s.connections, s.connection_warmup, []
        elif section == "parallel_connections":
            mode, count, warmup = "pconn", s.parallel_connections, s.parallel_connection_warmup
            extra = ["--concurrency", str(s.parallel_clients)]
        else:
            mode, count, warmup, extra = "ping", s.pings, s.ping_warmup, []
        argv = [sys.executable, "-m", "bench.client", mode, "--host", host, "--port", str(port),
                "--count", str(count), "--warmup", str(warmup), "--size", str(s.message_bytes),
                "--max-seconds", str(s.run_timeout_s), *extra]
        out, error, cpu, idle, peaks = self._measure(section, path, rep, None, "echo", argv,
                                                     timeout=s.run_timeout_s + 30)
        keys = ("conns_per_s", "ttfb_p50_us", "ttfb_p99_us") if conn else ("rtt_p50_us", "rtt_p99_us")
        figures: dict[str, float | None] = dict.fromkeys(keys)
        client: dict[str, object] = {}
        units = 0.0
        if out is not None:
            try:
                client = json.loads(out.stdout)
            except ValueError:
                error = f"client exit {out.returncode}: {out.stdout[-300:]} {out.stderr[-300:]}"
            else:
                if client["errors"]:
                    error = f"{client['errors']} failed exchanges, first: {client['first_error']}"
                if client["completed"]:
                    if conn:
                        figures = {"conns_per_s": client["per_s"], "ttfb_p50_us": client["p50_us"],
                                   "ttfb_p99_us": client["p99_us"]}
                    else:
                        figures = {"rtt_p50_us": client["p50_us"], "rtt_p99_us": client["p99_us"]}
                units = float(client["attempted"])  # type: ignore[arg-type]
        ok = not error and not client.get("truncated", True)
        if not error and client.get("truncated"):
            error = f"stopped by the time bound after {client.get('completed')} of {count}"
        return RunRecord(section, path, rep, None, ok, error, figures, units, cpu, idle, peaks, client)
