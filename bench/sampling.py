"""Bookkeeping around each measurement: CPU seconds per component (process trees sampled before and
after), the CPU of the machine that is not ours ("foreign", the noise of a shared machine), the peak
RSS of components while loaded, and waiting for an idle machine before a run."""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import procstat
from bench.records import CpuResult, IdleWait

IDLE_WINDOW_S = 0.5
LOAD_SAMPLE_INTERVAL_S = 0.2


def wait_idle(busy_fraction: float, max_wait_s: float, ours: Path | None = None) -> IdleWait:
    """Wait (bounded) until the machine's busy fraction over a short window is below `busy_fraction`.
    With max_wait_s 0, measure one window and go ahead."""
    start = time.monotonic()
    while True:
        before = procstat.machine_cpu()
        time.sleep(IDLE_WINDOW_S)
        after = procstat.machine_cpu()
        span = after.total - before.total
        busy = (after.busy - before.busy) / span if span > 0 else 0.0
        waited = time.monotonic() - start
        if busy < busy_fraction:
            return IdleWait(round(busy, 3), round(waited, 2), False)
        if waited >= max_wait_s:
            return IdleWait(round(busy, 3), round(waited, 2), True)


@dataclass
class CpuWindow:
    """CPU seconds of each component (name -> root pid) between `start()` and `stop()`."""

    components: Mapping[str, int]
    fabric_cgroup: Path
    _start: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0

    def _read(self) -> dict[str, float]:
        children = procstat.children_map()
        out = {name: procstat.cpu_seconds(procstat.tree(pid, children)) for name, pid in self.components.items()}
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["_children"] = usage.ru_utime + usage.ru_stime
        out["_fabric"] = procstat.cgroup_cpu_seconds(self.fabric_cgroup)
        out["_self"] = procstat.self_cpu_seconds()
        machine = procstat.machine_cpu()
        out["_busy"], out["_total"] = machine.busy, machine.total
        return out

    def start(self) -> None:
        self._start = self._read()
        self._t0 = time.monotonic()

    def stop(self) -> CpuResult:
        end = self._read()
        wall = time.monotonic() - self._t0
        delta = {k: end[k] - self._start[k] for k in end}
        total = delta.pop("_total")
        busy = delta.pop("_busy")
        ours = delta.pop("_fabric") + delta.pop("_self")
        client = delta.pop("_children")
        foreign = max(0.0, busy - ours)
        return CpuResult(wall_s=round(wall, 3), components={k: round(v, 3) for k, v in delta.items()},
                         client_cpu_s=round(client, 3),
                         machine_busy_fraction=round(busy / total, 3) if total > 0 else 0.0,
                         foreign_cpu_fraction=round(foreign / total, 3) if total > 0 else 0.0)


class LoadSampler:
    """Samples the RSS of process trees in a thread while a run goes on; `peak_mb` after `stop()`.

    Bounded: one sample per LOAD_SAMPLE_INTERVAL_S, stops when asked (or when the context ends)."""

    def __init__(self, components: Mapping[str, int]) -> None:
        self.components = dict(components)
        self.peak_mb: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-load-sampler", daemon=True)
        self._error: BaseException | None = None

    def _sample(self) -> None:
        children = procstat.children_map()
        for name, pid in self.components.items():
            mb = procstat.rss_bytes(procstat.tree(pid, children)) / 1e6
            if mb > self.peak_mb.get(name, 0.0):
                self.peak_mb[name] = round(mb, 1)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._sample()
                self._stop.wait(LOAD_SAMPLE_INTERVAL_S)
        except BaseException as exc:  # handed to stop(), which raises it in the caller's thread
            self._error = exc

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> dict[str, float]:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(10)
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("the RSS sampler failed") from error
        return self.peak_mb


def rss_now_mb(components: Mapping[str, int], field: str = "VmRSS") -> dict[str, float]:
    """VmRSS (or another /proc/<pid>/status field, e.g. RssAnon) of each component's tree, MB."""
    children = procstat.children_map()
    return {name: round(procstat.rss_bytes(procstat.tree(pid, children), field) / 1e6, 1)
            for name, pid in components.items()}
