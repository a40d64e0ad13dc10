"""Finding a fabric's objects by name: every netns, root-netns link, cgroup and runtime dir starting with a prefix."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabric import cgroups, netns

DEFAULT_RUNTIME_ROOT = Path("/run/clusterlink-fabric")
PREFIX = "cl"
_FABRIC_NAME = re.compile(r"cl([0-9a-f]{4})")


def fabric_id_of(name: str) -> str | None:
    """The fabric id a `cl<id>...` name belongs to, or None for another `cl*` name."""
    match = _FABRIC_NAME.match(name)
    return match.group(1) if match else None


@dataclass
class Leftovers:
    """Objects found with one name prefix."""

    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    cgroups: list[Path] = field(default_factory=list)
    runtime_dirs: list[Path] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.netns or self.links or self.cgroups or self.runtime_dirs)

    def removal_args(self) -> dict[str, Any]:
        return {
            "pid_files": [d / "pids" for d in self.runtime_dirs],
            "cgroup_paths": self.cgroups,
            "netns_names": sorted(self.netns, key=lambda n: (-n.count("."), n)),  # pods first, then nodes, ...
            "root_links": self.links,
            "paths": self.runtime_dirs,
        }

    def by_fabric(self) -> dict[str | None, Leftovers]:
        groups: dict[str | None, Leftovers] = {}

        def group(name: str) -> Leftovers:
            return groups.setdefault(fabric_id_of(name), Leftovers())

        for name in self.netns:
            group(name).netns.append(name)
        for name in self.links:
            group(name).links.append(name)
        for path in self.cgroups:
            group(path.name).cgroups.append(path)
        for path in self.runtime_dirs:
            group(path.name).runtime_dirs.append(path)
        return groups


def find_leftovers(
    prefix: str = PREFIX,
    runtime_root: Path = DEFAULT_RUNTIME_ROOT,
    cgroup_root: Path = cgroups.DEFAULT_ROOT,
) -> Leftovers:
    return Leftovers(
        netns=netns.names(prefix),
        links=netns.links(None, prefix),
        cgroups=sorted(p for p in cgroup_root.glob(f"{prefix}*") if p.is_dir()),
        runtime_dirs=sorted(runtime_root.glob(f"{prefix}*")) if runtime_root.is_dir() else [],
    )
