"""How many CPUs this process may really use: the smaller of its CPU affinity and its cgroup's CPU
quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`, on the process's
cgroup and every ancestor), rounded up. In a container with a 500m limit on a 64-core node that
is 1, not 64: the default of the gateway's --workers.

`available_cpus(root)` reads `/proc/self/cgroup` and `/proc/self/mountinfo` under `root` (tests
point it at a copy); anything unreadable counts as "no limit".
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(root within the hierarchy, mount point, fstype, super options) of each cgroup mount."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        out.append((fields[3], fields[4], tail[0], set(tail[2].split(","))))
    return out


def _ancestors(mount_point: str, mount_root: str, cgroup: str) -> list[Path]:
    """The directories of `cgroup` and its ancestors that this mount shows, innermost first."""
    rel = cgroup
    if mount_root not in ("/", "") and (rel == mount_root or rel.startswith(mount_root.rstrip("/") + "/")):
        rel = rel[len(mount_root.rstrip("/")):]  # a container sees its own cgroup as the mount's root
    parts = [p for p in rel.split("/") if p]
    return [Path(mount_point, *parts[:i]) for i in range(len(parts), -1, -1)]


def _quota_v2(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if not text:
        return None
    parts = text.split()
    if len(parts) < 2 or parts[0] == "max":
        return None
    try:
        return int(parts[0]) / int(parts[1])
    except (ValueError, ZeroDivisionError):
        return None


def _quota_v1(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    try:
        q, p = int((quota or "").strip()), int((period or "").strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_limit(root: Path = Path("/")) -> float | None:
    """The tightest CPU quota on this process's cgroups, in CPUs (None: no quota)."""
    cgroups = _read(root / "proc/self/cgroup") or ""
    mounts = _mounts(_read(root / "proc/self/mountinfo") or "")
    limits: list[float] = []
    for line in cgroups.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            for mount_root, point, fstype, _ in mounts:
                if fstype == "cgroup2":
                    limits += [q for d in _ancestors(str(root) + point, mount_root, path)
                               if (q := _quota_v2(d)) is not None]
        elif "cpu" in controllers.split(","):
            for mount_root, point, fstype, options in mounts:
                if fstype == "cgroup" and "cpu" in options:
                    limits += [q for d in _ancestors(str(root) + point, mount_root, path)
                               if (q := _quota_v1(d)) is not None]
    return min(limits) if limits else None


def available_cpus(root: Path = Path("/")) -> int:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is None:
        return max(1, affinity)
    return max(1, min(affinity, math.ceil(limit - 1e-9)))
