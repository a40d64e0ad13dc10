"""Readers of /proc and cgroup v2 files: CPU time and RSS of a process tree, machine-wide busy time,
and a cgroup's CPU usage. No state; a process that vanished between two reads counts as absent."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # fields after the command name (which may contain spaces and parentheses); index 0 = field 3 (state)
    return text[text.rindex(")") + 2:].split()


def children_map() -> dict[int, list[int]]:
    """ppid -> pids, for every process now."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def tree(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """`pid` and its live descendants."""
    children = children_map() if children is None else children
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime + cutime + cstime of the processes (children they reaped included, so that the
    difference of two readings of a tree stays right when a child exits in between)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime (fields 14-17)
    return ticks / CLOCK_TICKS


def rss_bytes(pids: list[int], field: str = "VmRSS") -> int:
    """Sum of a /proc/<pid>/status memory field over the processes: VmRSS (shared pages count once per
    process) or RssAnon (heap and other anonymous memory, without mapped files such as libraries)."""
    prefix = field + ":"
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="utf-8") as f:
                for line in f:
                    if line.startswith(prefix):
                        total += int(line.split()[1]) * 1024
                        break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


@dataclass(frozen=True)
class MachineCpu:
    """Machine-wide CPU time in seconds, from the first line of /proc/stat."""

    busy: float
    total: float


def machine_cpu() -> MachineCpu:
    with open("/proc/stat", encoding="utf-8") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    return MachineCpu(busy=(total - idle) / CLOCK_TICKS, total=total / CLOCK_TICKS)


def cgroup_cpu_seconds(cgroup: Path) -> float:
    """usage_usec of a cgroup v2 directory (every process in it and below), in seconds."""
    with open(cgroup / "cpu.stat", encoding="utf-8") as f:
        for line in f:
            key, value = line.split()
            if key == "usage_usec":
                return int(value) / 1e6
    raise RuntimeError(f"{cgroup}/cpu.stat has no usage_usec")


def self_cpu_seconds() -> float:
    """This process's own CPU time (not its children: those run in the fabric's cgroups)."""
    t = os.times()
    return t.user + t.system
