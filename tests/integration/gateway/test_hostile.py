"""A hostile peer against the peer port, and what a well-behaved client sees at the same time.

Each case asserts what the attacker observes (answers, a close, a reset, within a bound), that a
concurrent legitimate client is served within a latency bound, and that the gateway's worker is
still alive with its descriptors back to the baseline and its memory growth bounded. The
attacks that need one worker to be measurable (one worker serves everything) run against `solo`,
a one-worker gateway for west fed by the same control plane as the shared fabric's.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controlplane import pki

from .conftest import TEST_LIMITS, Fabric
from .hostile import HEALTHZ, KINDS, SLOW_KINDS, Kind, Probe, SoakLoad, Target, children, run_kind, run_soak
from .support import GatewayProcess, client_context, http_exchange, open_import, tls_connect

ROUNDS = int(os.environ.get("CLUSTERLINK_HOSTILE_ROUNDS", "8"))  # per kind (make soak: more)
REQUEST_TIMEOUT = 2.0  # TEST_LIMITS' --request-timeout
ATTACK_LIMIT = 20.0  # the longest an attack runs (they end long before when the gateway holds)


@dataclass
class Worker:
    """The one worker of a one-worker gateway: its descriptors and memory."""

    pid: int

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_mb(self) -> float:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError(f"no VmRSS for {self.pid}")

    def fd_targets(self) -> list[str]:
        out = []
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                out.append(os.readlink(f"/proc/{self.pid}/fd/{fd}"))
            except OSError:
                continue
        return sorted(out)

    def alive(self) -> bool:
        return os.path.exists(f"/proc/{self.pid}")

    def settle_fds(self, baseline: int, timeout: float = 10.0) -> int:
        """The descriptor count once it is back to `baseline` (or what it is at the timeout)."""
        deadline = time.monotonic() + timeout
        while (n := self.fds()) > baseline and time.monotonic() < deadline:
            time.sleep(0.05)
        return n


@dataclass
class Solo:
    gateway: GatewayProcess
    certs: Path  # east's: the attacker holds a valid fabric certificate
    target: Target
    worker: Worker = field(init=False)

    def __post_init__(self) -> None:
        assert self.gateway.proc is not None
        assert children(self.gateway.proc.pid) == []  # --workers 1: the gateway process is the worker
        self.worker = Worker(self.gateway.proc.pid)

    def baseline_fds(self) -> int:
        """The worker's descriptors after one served request (files opened on first use, such as
        the metrics server's, are then open)."""
        with tls_connect(self.gateway.peer_port, self.certs, "west") as sock:
            assert http_exchange(sock, HEALTHZ)[0] == 200
        return self.worker.settle_fds(0, timeout=0.5)

    def assert_recovered(self, baseline: int) -> None:
        assert self.worker.alive(), f"the worker died:\n{self.gateway.log_tail()}"
        n = self.worker.settle_fds(baseline)
        assert n <= baseline, f"{n} descriptors, {baseline} before: {self.worker.fd_targets()}"


@pytest.fixture(scope="module")
def solo(fabric: Fabric, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Solo]:
    root = tmp_path_factory.mktemp("solo")
    gateway = GatewayProcess("west-solo", fabric.certs.west, fabric.cp_west.socket_path, root, workers=1,
                             extra=[*TEST_LIMITS, "--max-requests-per-connection", "100000"])
    gateway.start()
    try:
        gateway.wait_ready(fabric.version["west"])
        eve = pki.create_peer_cert(fabric.certs.root, "eve")  # signed by the fabric CA; no Peer object
        yield Solo(gateway, fabric.certs.east, hostile_target(fabric, gateway, eve))
    finally:
        gateway.stop()


async def _open(port: int, certs: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, ssl=client_context(certs), server_hostname="west")


async def _read_all(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, str]:
    """Everything until the server ends the connection: (bytes, "eof" or "reset")."""
    data = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(1 << 20):
                data += chunk
    except (ConnectionResetError, ssl.SSLError):
        return bytes(data), "reset"
    except asyncio.IncompleteReadError:
        return bytes(data), "eof"
    return bytes(data), "eof"


# -- pipelining -----------------------------------------------------------------------------------

def test_pipelined_requests_do_not_stall_the_worker(solo: Solo) -> None:
    """20,000 pipelined requests on one connection are all answered, but the worker serves
    another client between them (it used to answer them all first: 2.7 s without a turn)."""
    port = solo.gateway.peer_port
    baseline = solo.baseline_fds()

    async def attack() -> tuple[int, float]:
        reader, writer = await _open(port, solo.certs)
        started = time.monotonic()
        writer.write(HEALTHZ * 20_000)
        answers = 0
        data = bytearray()
        async with asyncio.timeout(60):
            while answers < 20_000:
                chunk = await reader.read(1 << 20)
                assert chunk, f"closed after {answers} answers"
                data += chunk
                answers = data.count(b"HTTP/1.1 200 ")
        took = time.monotonic() - started
        writer.close()
        return answers, took

    with Probe(port, solo.certs) as probe:
        time.sleep(0.2)
        answers, took = asyncio.run(attack())
    assert answers == 20_000
    assert took > 0.3, "the attack was too short to say anything"
    during = probe.latencies[-max(1, int(took / 0.03)):]
    assert not probe.failures and probe.latencies
    assert max(during) < 0.5, f"a legitimate client waited {max(during):.2f} s while the attack ran {took:.2f} s"
    solo.assert_recovered(baseline)


def test_requests_per_connection_are_capped(net: Fabric) -> None:
    """The 1000th request on a connection (the default cap) is answered with
    'Connection: close', and the connection ends after it."""
    async def pipeline() -> tuple[bytes, str]:
        reader, writer = await _open(net.west.peer_port, net.certs.east)
        writer.write(HEALTHZ * 1500)
        data, how = await _read_all(reader, timeout=30)
        writer.transport.abort()
        return data, how

    data, how = asyncio.run(pipeline())
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 1000 and how == "eof"
    assert b"connection: close" in answers[-1].lower() and all(b"connection: close" not in a.lower()
                                                                for a in answers[:-1])
    with tls_connect(net.west.peer_port, net.certs.east, "west") as sock:
        assert http_exchange(sock, HEALTHZ)[0] == 200


def test_pipelining_without_reading_is_dropped_and_memory_stays_bounded(solo: Solo) -> None:
    """Four connections pipeline requests and never read the answers (they used to grow the
    worker by 1.35 MB/s while legitimate clients failed): each is dropped --request-timeout after
    its unread answers reached a small bound (a few hundred KiB, a few seconds of answering on
    this machine), the worker's memory grows by little, a legitimate client is served
    throughout, and the descriptors come back."""
    port = solo.gateway.peer_port
    baseline = solo.baseline_fds()
    rss_before = solo.worker.rss_mb()
    chunk = HEALTHZ * 200

    async def attacker() -> tuple[float | None, int]:
        reader, writer = await _open(port, solo.certs)
        started = time.monotonic()
        sent = 0
        try:
            async with asyncio.timeout(ATTACK_LIMIT):
                while reader.exception() is None and not reader.at_eof():
                    writer.write(chunk)
                    sent += len(chunk)
                    try:
                        async with asyncio.timeout(0.05):
                            await writer.drain()
                    except TimeoutError:
                        pass  # the server stopped reading: keep the connection, keep not reading
                    except (ConnectionError, ssl.SSLError):
                        break
            ended: float | None = time.monotonic() - started
        except TimeoutError:
            ended = None
        writer.transport.abort()
        return ended, sent

    async def attack() -> list[tuple[float | None, int]]:
        return await asyncio.gather(*(attacker() for _ in range(4)))

    with Probe(port, solo.certs) as probe:
        time.sleep(0.2)
        outcomes = asyncio.run(attack())
        peak = solo.worker.rss_mb()
    assert all(ended is not None for ended, _ in outcomes), f"connections still open after {ATTACK_LIMIT} s: {outcomes}"
    assert all(sent > len(chunk) * 5 for _, sent in outcomes), f"the attack sent too little: {outcomes}"
    assert not probe.failures, probe.failures[:3]
    assert max(probe.latencies) < 0.5, f"a legitimate client waited {max(probe.latencies):.2f} s"
    assert peak - rss_before < 20, f"the worker grew from {rss_before:.0f} to {peak:.0f} MB"
    assert "its answers were not read" in solo.gateway.log_tail()
    solo.assert_recovered(baseline)


# -- every hostile kind, with a legitimate client measured at the same time -------------------------

def hostile_target(fabric: Fabric, gateway: GatewayProcess, unconfigured: Path) -> Target:
    return Target(peer_port=gateway.peer_port, agent_port=gateway.agent_port, valid=fabric.certs.east,
                  unconfigured=unconfigured, other_fabric=fabric.certs.other_fabric_east,
                  expired=fabric.certs.expired_east, token_key=fabric.west_key)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_a_hostile_kind_is_refused_while_a_legitimate_client_is_served(solo: Solo, kind: Kind) -> None:
    """ROUNDS connections of one hostile kind, four at a time, against a one-worker gateway:
    each observes the refusal it should (status, reset or close, within its bound), a
    legitimate client making new connections throughout is always served (p99 under 1 s), the
    worker lives, its descriptors come back to the baseline and its memory grows by little."""
    baseline = solo.baseline_fds()
    rss_before = solo.worker.rss_mb()
    rounds = max(4, ROUNDS // 2) if kind.name in SLOW_KINDS else ROUNDS
    with Probe(solo.gateway.peer_port, solo.certs) as probe:
        report = run_kind(kind, solo.target, rounds)
    assert report.runs == rounds
    assert not report.unexpected, f"{kind.name}: {report.unexpected[:5]} (expected {sorted(kind.expected)})"
    assert probe.latencies and not probe.failures, probe.failures[:3]
    assert probe.p99() < 1.0, f"a legitimate client waited {probe.p99():.2f} s (p99) during {kind.name}"
    assert solo.worker.rss_mb() - rss_before < 15, f"the worker grew from {rss_before:.0f} MB"
    solo.assert_recovered(baseline)


SOAK_SECONDS = float(os.environ.get("CLUSTERLINK_SOAK_SECONDS", "20"))  # make soak: 600


@pytest.mark.timeout(SOAK_SECONDS + 300)
def test_a_mixed_soak_keeps_everything_served_and_bounded(net: Fabric, tmp_path: Path) -> None:
    """Echo connections, 8 MiB uploads and a healthz prober served while every hostile kind runs
    in turn and west's snapshot changes every 2 s, for CLUSTERLINK_SOAK_SECONDS (20 s here, 600
    in `make soak`, whose report is CLUSTERLINK_SOAK_REPORT): nothing legitimate fails, no
    attack gets anything but its refusal, no process dies, descriptors come back and memory
    stays bounded (and, in a long soak, stops growing)."""
    eve = net.certs.root / "default_fabric" / "eve-soak"
    if not eve.exists():
        eve = pki.create_peer_cert(net.certs.root, "eve-soak")
    target = hostile_target(net, net.west, eve)
    assert net.west.proc is not None and net.east.proc is not None
    processes = {"west": net.west.proc.pid, "east": net.east.proc.pid}
    workers_before = {name: children(pid) for name, pid in processes.items()}
    report_path = Path(os.environ.get("CLUSTERLINK_SOAK_REPORT") or tmp_path / "soak-report.json")
    report = run_soak(target, SoakLoad(net.echo_port, open_import), processes, seconds=SOAK_SECONDS,
                      churn=lambda: net.publish_west(wait=False), report_path=report_path)
    summary = {k: report[k] for k in ("echo", "uploads", "prober", "hostile_connections")}
    assert report["echo"]["failed"] == 0 and report["echo"]["ok"] > 0, summary
    assert report["uploads"]["failed"] == 0 and report["uploads"]["ok"] > 0, summary
    assert report["prober"]["failed"] == 0, summary
    assert report["hostile_connections"] > 0
    unexpected = {k: v["unexpected"] for k, v in report["hostile"].items() if v["unexpected"]}
    assert not unexpected, unexpected
    if SOAK_SECONDS >= 300:
        assert all(v["runs"] > 0 for v in report["hostile"].values()), report["hostile"]
    assert {name: children(pid) for name, pid in processes.items()} == workers_before, "a worker was restarted"
    for key, proc in report["processes"].items():
        assert proc["alive_at_end"], key
        assert proc["fds_end"] <= proc["fds_start"] + 24, (key, proc)
        assert proc["rss_end_mb"] - proc["rss_start_mb"] < 40, (key, proc)
        if SOAK_SECONDS >= 300:
            assert proc["rss_slope_second_half_mb_per_min"] < 1.0, (key, proc)
