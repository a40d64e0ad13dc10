"""Metrics every component serves about itself: what is running, and the figures of its processes.

    clusterlink_build_info{component, version, python, event_loop}          1

and one set of process figures per process, from /proc when scraped (`Processes`), under one
name scheme for every component: `process` is "main" for the agent and the control plane (one
process each), "supervisor" and "worker-N" for the gateway:

    clusterlink_process_resident_memory_bytes{component, process}
    clusterlink_process_cpu_seconds_total{component, process}
    clusterlink_process_open_fds{component, process}
    clusterlink_process_start_time_seconds{component, process}

Certificate expiry is `controlplane.certmetrics` (it needs the PKI, which the agent must not import).

    register(registry, component, event_loop="uvloop", processes=None)
    version() -> str     this tree's version (VERSION; pyproject.toml reads it from here)
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

# prometheus_client is imported only by the collectors, when scraped (the CLI imports `version`
# from here).

# The one place the version is written: the wheel's metadata is made from it (pyproject.toml's
# dynamic version), so that a running component need not import importlib.metadata (with email,
# zipfile and csv: about 2.7 MB of every process) to say what it is.
VERSION = "0.1.0"
MAIN_PROCESS = "main"  # the `process` label of a component that is one process


def version() -> str:
    return VERSION


class BuildInfo:
    def __init__(self, component: str, event_loop: str = "") -> None:
        self.component = component
        self.event_loop = event_loop
        self._version = version()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

        family = GaugeMetricFamily("clusterlink_build_info", "Always 1: the running component's version, Python "
                                   "and event loop", labels=["component", "version", "python", "event_loop"])
        family.add_metric([self.component, self._version, platform.python_version(), self.event_loop], 1)
        yield family


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _boot_time() -> float:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def parse_stat(text: str) -> tuple[int, int]:
    """(utime + stime, starttime), in clock ticks, from the text of /proc/<pid>/stat. The command
    name (field 2) is in parentheses and may itself hold spaces and ')': fields are counted from
    the last ')'. ValueError/IndexError on anything else."""
    fields = text[text.rindex(")") + 2:].split()  # fields 3, 4, ... of proc(5)
    return int(fields[11]) + int(fields[12]), int(fields[19])


class Processes:
    """Process figures of the processes `pids()` names ({"supervisor": pid, "worker-0": pid, ...});
    a process that is gone by the time of the scrape has no sample."""

    def __init__(self, component: str, pids: Callable[[], Mapping[str, int]]) -> None:
        self.component = component
        self.pids = pids
        self._boot = _boot_time()

    def _read(self, pid: int) -> tuple[float, float, int, float] | None:
        try:
            with open(f"/proc/{pid}/stat") as f:
                cpu_ticks, start_ticks = parse_stat(f.read())
            with open(f"/proc/{pid}/statm") as f:
                rss_pages = int(f.read().split()[1])
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, ValueError, IndexError):
            return None  # gone between the scrape's list and the read
        return (rss_pages * _PAGE, cpu_ticks / _TICKS, fds, self._boot + start_ticks / _TICKS)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily  # noqa: PLC0415

        labels = ["component", "process"]
        rss = GaugeMetricFamily("clusterlink_process_resident_memory_bytes", "Resident memory of each process",
                                labels=labels)
        cpu = CounterMetricFamily("clusterlink_process_cpu_seconds", "User and system CPU time of each process",
                                  labels=labels)
        fds = GaugeMetricFamily("clusterlink_process_open_fds", "Open file descriptors of each process",
                                labels=labels)
        start = GaugeMetricFamily("clusterlink_process_start_time_seconds", "When each process started (Unix "
                                  "seconds; a change is a restart)", labels=labels)
        for name, pid in sorted(self.pids().items()):
            figures = self._read(pid)
            if figures is None:
                continue
            value = [self.component, name]
            rss.add_metric(value, figures[0])
            cpu.add_metric(value, figures[1])
            fds.add_metric(value, figures[2])
            start.add_metric(value, figures[3])
        yield from (rss, cpu, fds, start)


def register(registry: CollectorRegistry, component: str, *, event_loop: str = "",
             processes: Callable[[], Mapping[str, int]] | None = None) -> None:
    """Build info and process figures of `component`; `processes` names its processes (default:
    this one, as "main")."""
    registry.register(BuildInfo(component, event_loop))
    pid = os.getpid()
    registry.register(Processes(component, processes or (lambda: {MAIN_PROCESS: pid})))
