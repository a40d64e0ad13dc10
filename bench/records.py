"""What one measurement leaves behind (plain dataclasses, no I/O): the idle wait before it, the CPU
window around it, and the run itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# The figures of a `udp` run (iperf3 -u): received and sent Mbit/s, loss in percent, jitter.
UDP_FIGURES = ("mbit_per_s", "sent_mbit_per_s", "lost_percent", "jitter_ms")


@dataclass(frozen=True)
class IdleWait:
    busy_fraction: float   # of the last window before the run started
    waited_s: float
    timed_out: bool


@dataclass
class CpuResult:
    wall_s: float
    components: dict[str, float]   # CPU seconds of each component's process tree
    client_cpu_s: float            # the client program (reaped child of ours)
    machine_busy_fraction: float   # of all cores, during the window
    foreign_cpu_fraction: float    # busy CPU not spent by the fabric or by us, as a fraction of all cores


@dataclass
class RunRecord:
    section: str                 # "throughput" | "udp" | "connections" | "parallel_connections" | "latency"
    path: str
    repetition: int
    streams: int | None          # throughput only
    ok: bool
    error: str
    figures: dict[str, float | None]
    units: float                 # bytes received (throughput, udp), connections made (connections), requests (latency)
    cpu: CpuResult | None
    idle: IdleWait
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    client: dict[str, object] = field(default_factory=dict)  # the client's own summary, for the raw record

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
