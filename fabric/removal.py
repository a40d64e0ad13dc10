"""Removing fabric objects in the one safe order: processes, BPF attachments, namespaces, links, cgroups, files.

Every step is attempted even when an earlier one failed; failures are reported, collected in
`errors`, and raised by the caller. Used by `Topology.destroy()` and by `fabric.cleanup`.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fabric import cgroups, netns
from fabric.process import start_time

Report = Callable[[str], None]


def process_running(pid: int, started: int | None = None) -> bool:
    """Whether `pid` is a live (not zombie) process, started at `started` when given."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return False
    return started is None or int(fields[19]) == started


def command_line(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]]


@dataclass(frozen=True)
class Recorded:
    """A process recorded in a pid file by `fabric.process.spawn`."""

    pid: int
    start_time: int
    argv: list[str]
    command: list[str]

    def still_ours(self) -> bool:
        """Same pid, same start time, and its command line is what we started (before or after nsenter's exec)."""
        return process_running(self.pid, self.start_time) and command_line(self.pid) in (self.argv, self.command)


def read_pid_file(path: Path) -> list[Recorded]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        if line.strip():
            r = json.loads(line)
            records.append(Recorded(int(r["pid"]), int(r["start_time"]), list(r["argv"]), list(r["command"])))
    return records


@dataclass
class Removal:
    """One removal pass. `dry_run` reports what would be removed and changes nothing."""

    report: Report
    dry_run: bool = False
    grace: float = 2.0
    errors: list[Exception] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def run(
        self,
        *,
        pid_files: Iterable[Path] = (),
        cgroup_paths: Iterable[Path] = (),
        netns_names: Iterable[str] = (),
        root_links: Iterable[str] = (),
        paths: Iterable[Path] = (),
    ) -> None:
        cgroup_paths, netns_names = _outermost(list(cgroup_paths)), list(netns_names)
        for pid_file in pid_files:
            self._step(f"kill processes recorded in {pid_file}", self._kill_recorded, pid_file)
        for cgroup in cgroup_paths:
            self._step(f"kill processes in cgroup {cgroup}", self._kill_cgroup, cgroup)
        for name in netns_names:
            self._step(f"kill processes in netns {name}", self._kill_netns, name)
        for cgroup in cgroup_paths:
            self._step(f"detach BPF programs from {cgroup}", self._detach_bpf, cgroup)
        for name in netns_names:
            self._step(f"delete netns {name}", self._delete_netns, name)
        for name in root_links:
            self._step(f"delete link {name}", self._delete_link, name)
        for cgroup in cgroup_paths:
            self._step(f"remove cgroup {cgroup}", self._remove_cgroup, cgroup)
        for path in paths:
            self._step(f"remove {path}", self._remove_path, path)

    def _step(self, what: str, action: Callable[..., None], *args: object) -> None:
        try:
            action(*args)
        except Exception as exc:  # noqa: BLE001 - every step is tried; errors are collected and raised by the caller
            exc.add_note(f"while trying to {what}")
            self.errors.append(exc)
            self.report(f"FAILED to {what}: {exc}")

    def _did(self, message: str) -> None:
        self.removed.append(message)
        self.report(("would " if self.dry_run else "") + message)

    def _kill_recorded(self, pid_file: Path) -> None:
        ours = [r for r in read_pid_file(pid_file) if r.still_ours()]
        for r in ours:
            self._did(f"stop pid {r.pid} (`{shlex.join(r.argv)[:100]}`) recorded in {pid_file}")
        if self.dry_run or not ours:
            return
        for r in ours:
            _signal(r.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while any(r.still_ours() for r in ours) and time.monotonic() < deadline:
            time.sleep(0.05)
        for r in ours:
            if r.still_ours():
                _signal(r.pid, signal.SIGKILL)

    def _kill_cgroup(self, path: Path) -> None:
        pids = cgroups.members(path)
        if not pids:
            return
        self._did(f"kill pids {pids} in cgroup {path}")
        if not self.dry_run:
            cgroups.kill(path)

    def _kill_netns(self, name: str) -> None:
        if not netns.exists(name):
            return
        pids = [p for p in netns.pids(name) if process_running(p)]
        if not pids:
            return
        self._did(f"kill pids {pids} in netns {name}")
        if self.dry_run:
            return
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while any(process_running(p) for p in pids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"pids {[p for p in pids if process_running(p)]} in netns {name} survived SIGKILL")
            time.sleep(0.02)

    def _detach_bpf(self, path: Path) -> None:
        if not path.is_dir():
            return
        if shutil.which("bpftool") is None:
            # Not fatal: removing the cgroup releases legacy attachments too; detaching first is hygiene.
            self.report(f"note: bpftool is not installed, BPF programs on {path} go when the cgroup is removed")
            return
        links = cgroups.cgroup_links()
        for a in [a for cg in cgroups.subtree(path) for a in cgroups.attachments(cg, links)]:
            if a.link_id is not None:
                # A live process holds the link: it was killed above if it is ours; otherwise rmdir releases it.
                self.report(f"note: program {a.prog_id} ({a.attach_type}) on {a.cgroup} is held by bpf link {a.link_id}")
                continue
            self._did(f"detach BPF program {a.prog_id} {a.name!r} ({a.attach_type}) from {a.cgroup}")
            if not self.dry_run:
                cgroups.detach(a)

    def _delete_netns(self, name: str) -> None:
        if netns.exists(name):
            self._did(f"delete netns {name}")
            if not self.dry_run:
                netns.delete(name)

    def _delete_link(self, name: str) -> None:
        if name in netns.links(prefix=name):
            self._did(f"delete link {name} (root netns)")
            if not self.dry_run:
                netns.delete_link(name)

    def _remove_cgroup(self, path: Path) -> None:
        if path.is_dir():
            self._did(f"remove cgroup {path}")
            if not self.dry_run:
                cgroups.remove(path)

    def _remove_path(self, path: Path) -> None:
        if path.is_dir():
            self._did(f"remove directory {path}")
            if not self.dry_run:
                shutil.rmtree(path)
        elif path.exists():
            self._did(f"remove file {path}")
            if not self.dry_run:
                path.unlink()


def _outermost(paths: list[Path]) -> list[Path]:
    """The paths not below another one of the list (each step handles a whole cgroup subtree), in order."""
    return [p for p in paths if not any(other != p and other in p.parents for other in paths)]


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # exited meanwhile


def owner_alive(runtime_dir: Path) -> int | None:
    """The pid of the live process that owns the fabric whose runtime directory this is, else None."""
    try:
        owner = json.loads((runtime_dir / "owner").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    pid, started = int(owner["pid"]), int(owner["start_time"])
    return pid if process_running(pid, started) else None


def write_owner(runtime_dir: Path) -> None:
    pid = os.getpid()
    (runtime_dir / "owner").write_text(json.dumps({"pid": pid, "start_time": start_time(pid)}), encoding="utf-8")
