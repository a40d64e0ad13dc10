"""The knobs of one benchmark run, chosen once from the command line: the full run (`make bench`),
`--quick` (`make bench BENCH_QUICK=1`) and `--smoke` (the test that keeps the harness from rotting).

Every load loop is bounded twice: by a count (connections, ping-pongs, iperf3 seconds; iperf3 -u also
by its offered rate) and by a
time limit per client run (`run_timeout_s`), after which the client stops and reports what it did.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

SECTIONS = ("throughput", "udp", "connections", "parallel_connections", "latency", "failover", "policy")
FABRIC_SECTIONS = ("throughput", "udp", "connections", "parallel_connections", "latency")
MODES = ("full", "quick", "smoke")


@dataclass(frozen=True)
class Settings:
    mode: str = "full"
    repetitions: int = 3
    iperf_seconds: int = 10           # also the duration of each UDP run
    udp_mbit_per_s: int = 200        # the rate iperf3 -u offers (-b), Mbit/s
    udp_datagram_bytes: int = 1200   # UDP payload per datagram (-l): one 1500 B veth frame
    connections: int = 3000          # per connection run, after the warm-up
    connection_warmup: int = 50
    parallel_connections: int = 6000  # per parallel connection run, after the warm-up
    parallel_connection_warmup: int = 200
    parallel_clients: int = 32        # connections open at once in a parallel connection run
    pings: int = 10000               # ping-pongs per latency run, after the warm-up
    ping_warmup: int = 200
    message_bytes: int = 64
    failover_repetitions: int = 5     # per fault (kill, freeze, partition), on a fabric of its own
    failover_load_s: float = 5.0      # seconds of new connections per failover run
    failover_fault_after_s: float = 1.5  # the fault comes this long into the run
    policy_sizes: tuple[int, ...] = (10, 1000, 10000)
    policy_decisions: int = 20000
    threads: int = 1                 # gateway workers and HAProxy nbthread (the same, for fairness)
    idle_busy_fraction: float = 0.10  # the machine counts as idle below this busy fraction
    idle_max_wait_s: float = 10.0     # then the run goes ahead anyway (recorded)
    run_timeout_s: float = 120.0      # bound of one client run (iperf3 adds its duration)
    sections: tuple[str, ...] = SECTIONS

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        unknown = set(self.sections) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
        for name in ("repetitions", "iperf_seconds", "connections", "parallel_connections", "parallel_clients", "pings",
                     "message_bytes", "policy_decisions", "threads", "failover_repetitions",
                     "udp_mbit_per_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if (self.connections > 100_000 or self.parallel_connections > 1_000_000 or self.pings > 1_000_000
                or self.iperf_seconds > 300):
            raise ValueError("connections <= 100000, parallel_connections <= 1000000, pings <= 1000000 and "
                             "iperf_seconds <= 300")
        if self.udp_mbit_per_s > 10_000 or not 16 <= self.udp_datagram_bytes <= 65_000:
            raise ValueError("udp_mbit_per_s <= 10000 and 16 <= udp_datagram_bytes <= 65000")
        if self.parallel_clients > 1024:
            raise ValueError("parallel_clients <= 1024")
        if not 0 < self.failover_fault_after_s < self.failover_load_s <= 60 or self.failover_repetitions > 100:
            raise ValueError("0 < failover_fault_after_s < failover_load_s <= 60 and failover_repetitions <= 100")

    @property
    def needs_fabric(self) -> bool:
        return any(s in self.sections for s in FABRIC_SECTIONS)

    def as_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["policy_sizes"] = list(self.policy_sizes)
        out["sections"] = list(self.sections)
        return out


def preset(mode: str) -> Settings:
    """The settings of a mode before any explicit override."""
    if mode == "full":
        return Settings()
    if mode == "quick":
        return Settings(mode="quick", repetitions=1, iperf_seconds=2, udp_mbit_per_s=100, connections=300,
                        connection_warmup=20,
                        parallel_connections=1500, parallel_connection_warmup=64, pings=2000, ping_warmup=100,
                        policy_decisions=5000, idle_max_wait_s=5.0, failover_repetitions=2)
    if mode == "smoke":
        return Settings(mode="smoke", repetitions=1, iperf_seconds=1, udp_mbit_per_s=20, connections=100,
                        connection_warmup=10,
                        parallel_connections=300, parallel_connection_warmup=32, pings=300, ping_warmup=20,
                        policy_decisions=500, idle_max_wait_s=0.0, run_timeout_s=30.0,
                        failover_repetitions=1, failover_load_s=3.0, failover_fault_after_s=1.0)
    raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
