"""One measurement on one path: wait for an idle machine, open a CPU window and an RSS sampler, run the
client (iperf3, iperf3 -u or bench.client) inside the fabric, parse its answer into a `RunRecord`.

A failed run is recorded (ok False, the error) and the suite goes on; its figures count as missing.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.paths import SERVER_SIDE
from bench.records import UDP_FIGURES, CpuResult, IdleWait, RunRecord
from bench.sampling import CpuWindow, LoadSampler, wait_idle
from bench.settings import Settings
from bench.world import READY_TIMEOUT_S, NotReady, World


def udp_argv(host: str, port: int, settings: Settings) -> list[str]:
    """iperf3 -u towards host:port (its TCP control connection too) at the settings' rate and size."""
    return ["iperf3", "-u", "-c", host, "-p", str(port), "-b", f"{settings.udp_mbit_per_s}M",
            "-l", str(settings.udp_datagram_bytes), "-t", str(settings.iperf_seconds), "-J",
            "--connect-timeout", "5000"]


def parse_iperf_udp(stdout: str, returncode: int, stderr: str = "") -> tuple[str, dict[str, float | None], float,
                                                                            dict[str, object]]:
    """(error, figures, bytes received, client summary) of one `iperf3 -u -J` run (pure).

    Received = what the server counted (`end.sum_received`, iperf3 >= 3.10; older versions only
    have `end.sum`, whose packets minus lost packets give it). A run in which no datagram arrived
    is a failure: the path carries no UDP (the counts stay in the client summary)."""
    try:
        data = json.loads(stdout)
    except ValueError:
        return f"iperf3 exit {returncode}: {stdout[-300:]} {stderr[-300:]}", dict.fromkeys(UDP_FIGURES), 0.0, {}
    try:
        return _udp_result(data, returncode, stdout)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return (f"iperf3 exit {returncode}: unexpected JSON ({type(exc).__name__}: {exc})",
                dict.fromkeys(UDP_FIGURES), 0.0, {})


def _udp_result(data: Any, returncode: int, stdout: str) -> tuple[str, dict[str, float | None], float,
                                                                     dict[str, object]]:
    figures: dict[str, float | None] = dict.fromkeys(UDP_FIGURES)
    if not isinstance(data, dict) or data.get("error"):
        error = data.get("error") if isinstance(data, dict) else None
        return str(error or f"iperf3 exit {returncode}: {stdout[-300:]}"), figures, 0.0, {}
    end = data.get("end", {})
    total = end.get("sum", {})
    if not total or "packets" not in total:
        return f"iperf3 exit {returncode}: no UDP summary in end.sum", figures, 0.0, {}
    sent = end.get("sum_sent", total)
    blksize = float(data.get("start", {}).get("test_start", {}).get("blksize") or 0)
    if "sum_received" in end:
        got = end["sum_received"]
        received, seconds = float(got["bytes"]), float(got["seconds"])
    else:
        got = total
        received, seconds = (total["packets"] - total["lost_packets"]) * blksize, float(total["seconds"])
    client: dict[str, object] = {
        "received_bytes": received, "sent_bytes": float(sent["bytes"]), "seconds": seconds,
        "packets": got["packets"], "lost_packets": got["lost_packets"], "lost_percent": got["lost_percent"],
        "datagram_bytes": blksize, "offered_bit_per_s": data.get("start", {}).get("test_start", {}).get(
            "target_bitrate"),
        "sender_cpu_pct": end.get("cpu_utilization_percent", {}).get("host_total"),
        "receiver_cpu_pct": end.get("cpu_utilization_percent", {}).get("remote_total")}
    if received <= 0 or seconds <= 0:
        return f"no datagram arrived ({sent.get('packets')} sent)", figures, received, client
    figures = {"mbit_per_s": round(received * 8 / seconds / 1e6, 2),
               "sent_mbit_per_s": round(float(sent["bits_per_second"]) / 1e6, 2),
               "lost_percent": round(float(got["lost_percent"]), 3), "jitter_ms": round(float(got["jitter_ms"]), 4)}
    return "", figures, received, client


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

    def wait_udp(self, path: str) -> None:
        """A short, slow iperf3 -u through `path` gets datagrams across (the Import's UDP side, the
        agent's UDP redirect and the gateways' UDP flows come up asynchronously, like the echo
        paths `World.start` waits for). Bounded by READY_TIMEOUT_S; raises NotReady after it."""
        host, port = self.world.endpoint(path, "iperf")
        probe = dataclasses.replace(self.settings, udp_mbit_per_s=1, iperf_seconds=1)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                out = self.world.run_in(self.world.client_place(path), udp_argv(host, port, probe), timeout=30)
                error = parse_iperf_udp(out.stdout, out.returncode, out.stderr)[0]
            except subprocess.TimeoutExpired:
                error = "the probe did not finish within 30 s"
            if not error:
                return
            self.world.restart_iperf_server(SERVER_SIDE[path])
            if time.monotonic() > deadline:
                raise NotReady(f"{path} ({host}:{port}) carries no UDP after {READY_TIMEOUT_S:g} s: {error}")
            time.sleep(0.3)

    def udp(self, path: str, rep: int) -> RunRecord:
        """`iperf3 -u` at the offered rate for iperf_seconds: Mbit/s received, loss and jitter (the
        server's count, sent back to the client at the end of the test)."""
        s = self.settings
        host, port = self.world.endpoint(path, "iperf")
        argv = udp_argv(host, port, s)
        out, error, cpu, idle, peaks = self._measure("udp", path, rep, None, "iperf", argv,
                                                     timeout=s.iperf_seconds + 30)
        figures: dict[str, float | None] = dict.fromkeys(UDP_FIGURES)
        received = 0.0
        client: dict[str, object] = {}
        if out is not None:
            error, figures, received, client = parse_iperf_udp(out.stdout, out.returncode, out.stderr)
        if error:
            self.world.restart_iperf_server(SERVER_SIDE[path])
        return RunRecord("udp", path, rep, None, not error, error, figures, received, cpu, idle, peaks, client)

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
