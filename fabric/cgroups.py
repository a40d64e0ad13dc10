"""cgroup v2 subtrees of the fabric: create, list and kill members, remove depth-first, detach BPF programs."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from fabric.commands import command

DEFAULT_ROOT = Path("/sys/fs/cgroup/unified")


class CgroupError(RuntimeError):
    """A cgroup could not be emptied or removed."""


def is_cgroup2_mount(path: Path) -> bool:
    """Whether `path` is the mount point of a cgroup v2 hierarchy."""
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2" and fields[1] == str(path):
                return True
    return False


def of_process(pid: int) -> str:
    """The cgroup v2 path of `pid` relative to the hierarchy's root (the `0::` line of /proc/<pid>/cgroup)."""
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    raise CgroupError(f"process {pid} is in no cgroup v2 (no 0:: line in /proc/{pid}/cgroup)")


def subtree(path: Path) -> list[Path]:
    """`path` and every cgroup below it, children before their parent (the order rmdir needs)."""
    if not path.is_dir():
        return []
    found = [Path(dirpath) for dirpath, _dirs, _files in os.walk(path, topdown=False)]
    return found


def members(path: Path) -> list[int]:
    """Pids of the processes in `path` and below."""
    pids: list[int] = []
    for cgroup in subtree(path):
        try:
            text = (cgroup / "cgroup.procs").read_text()
        except FileNotFoundError:
            continue  # removed between the walk and the read: it has no members left
        pids.extend(int(p) for p in text.split())
    return pids


def populated(path: Path) -> bool:
    for line in (path / "cgroup.events").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "populated":
            return value.strip() == "1"
    raise CgroupError(f"{path}/cgroup.events has no 'populated' line")


def kill(path: Path, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process in `path` and below, and wait (bounded) until the subtree is empty."""
    if not path.is_dir():
        return []
    pids = members(path)
    if not pids:
        return []
    if (path / "cgroup.kill").exists():
        (path / "cgroup.kill").write_text("1")
    else:  # kernels before 5.14: kill one by one, forks in between are caught by the loop below
        _kill_each(pids)
    deadline = time.monotonic() + timeout
    while populated(path):
        if time.monotonic() > deadline:
            raise CgroupError(f"{path}: processes {members(path)} still there {timeout:g}s after SIGKILL")
        _kill_each(members(path))
        time.sleep(0.02)
    return pids


def _kill_each(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass  # already gone: exactly what we want


def remove(path: Path) -> list[Path]:
    """rmdir `path` and its descendants, deepest first; the subtree must have no processes left."""
    removed = []
    for cgroup in subtree(path):
        try:
            cgroup.rmdir()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CgroupError(f"cannot remove cgroup {cgroup}: {exc} (members: {members(cgroup)})") from exc
        removed.append(cgroup)
    return removed


@dataclass(frozen=True)
class Attachment:
    """A BPF program attached to a cgroup; `link_id` is set when it is held by a bpf link."""

    cgroup: Path
    prog_id: int
    attach_type: str
    name: str
    link_id: int | None


def attachments(path: Path, links: dict[tuple[int, int, str], int] | None = None) -> list[Attachment]:
    """BPF programs attached directly to `path` (not inherited), as `bpftool cgroup show` lists them.
    `links` is `cgroup_links()`, when the caller already has it."""
    out = command(["bpftool", "-j", "cgroup", "show", str(path)]).strip()
    if not out:
        return []
    if links is None:
        links = cgroup_links()
    cgroup_id = path.stat().st_ino
    return [
        Attachment(
            cgroup=path,
            prog_id=int(entry["id"]),
            attach_type=str(entry["attach_type"]),
            name=str(entry.get("name", "")),
            link_id=links.get((cgroup_id, int(entry["id"]), str(entry["attach_type"]))),
        )
        for entry in json.loads(out)
    ]


def cgroup_links() -> dict[tuple[int, int, str], int]:
    """The bpf links attached to cgroups: (cgroup id, program id, attach type) -> link id."""
    out = command(["bpftool", "-j", "link", "list"]).strip()
    found = {}
    for link in json.loads(out) if out else []:
        if link.get("type") == "cgroup":
            found[(int(link["cgroup_id"]), int(link["prog_id"]), str(link["attach_type"]))] = int(link["id"])
    return found


def detach(attachment: Attachment) -> None:
    """Detach a legacy (non-link) attachment; links go away with the process holding them."""
    if attachment.link_id is not None:
        raise CgroupError(
            f"program {attachment.prog_id} on {attachment.cgroup} is held by bpf link {attachment.link_id}: "
            "it is released when its holder exits or the cgroup is removed"
        )
    command(["bpftool", "cgroup", "detach", str(attachment.cgroup), attachment.attach_type, "id", str(attachment.prog_id)])
