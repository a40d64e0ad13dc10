"""Real processes in a fabric namespace and cgroup: spawn, wait until ready, stop, and record pids for crash cleanup.

A child joins its cgroup (a tiny `sh` writes its pid to cgroup.procs, then execs) and then execs
`nsenter --net=/run/netns/<ns> -- argv`: the mount namespace stays the host's (so /sys/fs/cgroup
stays visible) and every socket the program creates belongs to the cgroup.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fabric.netns import NETNS_DIR, nsenter_argv

POLL_INTERVAL = 0.05

# Runs inside the target netns: one TCP connect attempt, exit 0 when it was accepted.
_TCP_PROBE = (
    "import socket,sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()\n"
    "except OSError as e:\n"
    "    sys.exit(f'{type(e).__name__}: {e}')\n"
)


class ProcessDied(RuntimeError):
    """The process exited while we were waiting for it to become ready."""


# The child joins its cgroup from a tiny shell before anything else runs, then execs the rest (same
# pid, so it stays in the cgroup): no Python code runs between fork and exec. A `preexec_fn` would,
# and in a threaded parent (grpc, asyncio worker threads) that can deadlock the child before exec.
_JOIN_CGROUP = 'echo $$ > "$1" && shift && exec "$@"'


def _cgroup_procs(cgroup: str | Path | None) -> str | None:
    if cgroup is None:
        return None
    procs = os.fspath(Path(cgroup) / "cgroup.procs")
    if not os.path.exists(procs):
        raise FileNotFoundError(f"cgroup {cgroup} does not exist (no {procs})")
    return procs


def _command_line(argv: Sequence[str], netns: str | None, cgroup: str | Path | None = None) -> list[str]:
    """`argv` run in `netns` (through nsenter, which keeps the mounts) after joining `cgroup`."""
    line = (nsenter_argv(netns) if netns else []) + list(argv)
    procs = _cgroup_procs(cgroup)
    if procs is not None:
        line = ["sh", "-c", _JOIN_CGROUP, "cl-join-cgroup", procs, *line]
    return line


def _check_netns(netns: str | None) -> None:
    if netns is not None and not (NETNS_DIR / netns).exists():
        raise FileNotFoundError(f"network namespace {netns} does not exist (no {NETNS_DIR / netns})")


def _environment(env: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if env is None else {**os.environ, **env}


def start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot): with the pid, identifies a process over time."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def probe_tcp(netns: str | None, host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connect to host:port from inside `netns` is accepted."""
    result = run(
        [sys.executable, "-I", "-S", "-c", _TCP_PROBE, host, str(port), str(timeout)],
        netns=netns,
        timeout=timeout + 5.0,
    )
    return result.returncode == 0


class Proc:
    """One spawned process. Its stdout and stderr go to `log_path`."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        argv: Sequence[str],
        netns: str | None,
        cgroup: Path | None,
        log_path: Path,
    ) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.argv = list(argv)
        self.netns = netns
        self.cgroup = cgroup
        self.log_path = log_path

    def __repr__(self) -> str:
        where = f" in {self.netns}" if self.netns else ""
        return f"<Proc {self.pid} `{shlex.join(self.argv)[:80]}`{where}>"

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own; raise subprocess.TimeoutExpired after `timeout`."""
        return self.popen.wait(timeout)

    def wait_ready(self, check: Callable[[], bool], timeout: float, *, what: str = "ready") -> None:
        """Poll `check()` until it returns True; raise ProcessDied if the process exits, TimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive:
                raise ProcessDied(
                    f"{self} exited with {self.returncode} before it was {what}; log {self.log_path}:\n{self.log_tail()}"
                )
            if check():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self} not {what} after {timeout:g}s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(POLL_INTERVAL)

    def wait_tcp(self, netns: str | None, host: str, port: int, timeout: float = 10.0) -> None:
        """Wait until host:port accepts a TCP connection made from inside `netns`."""
        self.wait_ready(lambda: probe_tcp(netns, host, port), timeout, what=f"accepting on {host}:{port}")

    def wait_unix(self, path: str | Path, timeout: float = 10.0) -> None:
        """Wait until the unix socket at `path` accepts a connection."""

        def accepting() -> bool:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                try:
                    sock.connect(os.fspath(path))
                except (FileNotFoundError, ConnectionRefusedError):
                    return False
            return True

        self.wait_ready(accepting, timeout, what=f"accepting on {path}")

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until the log matches the regular expression `pattern`; return the match."""
        regex = re.compile(pattern, re.MULTILINE)
        found: list[re.Match[str]] = []

        def matched() -> bool:
            match = regex.search(self.log_text())
            if match:
                found.append(match)
            return match is not None

        self.wait_ready(matched, timeout, what=f"logging /{pattern}/")
        return found[0]

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; reap; kill what is left of its process group; return the exit status."""
        if self.popen.returncode is not None:
            return self.popen.returncode  # reaped earlier: its group id may belong to someone else by now
        if self.popen.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return self.kill()  # it ignored SIGTERM
        self._kill_group()  # just reaped: children it forked and left behind (a clean exit should have stopped them)
        return self.popen.wait(5.0)

    def kill(self) -> int:
        """SIGKILL the process and its process group, reap it, return the exit status."""
        if self.popen.returncode is None:
            self._kill_group()  # first, while its unreaped pid still reserves the group id
            self._signal(signal.SIGKILL)  # in case it left its process group
        return self.popen.wait(5.0)

    def _kill_group(self) -> None:
        """SIGKILL the process group it leads (it was started in its own session)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # no member left

    def _signal(self, signum: int) -> None:
        try:
            self.popen.send_signal(signum)
        except ProcessLookupError:
            pass  # exited between the check and the signal


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    netns: str | None = None,
    cgroup: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    log_path: Path,
    cwd: str | Path | None = None,
    pid_file: Path | None = None,
) -> Proc:
    """Start `argv` in `netns` (None: this namespace) and `cgroup` (None: this cgroup), output to `log_path`.

    `env` adds to (and overrides) this process's environment. When `pid_file` is given, a JSON line
    {pid, start_time, argv, command} is appended to it so that `fabric.cleanup` can kill the process
    after a crash of its owner.
    """
    argv = [os.fspath(a) for a in argv]
    _check_netns(netns)
    full = _command_line(argv, netns, cgroup)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_environment(env),
            cwd=cwd,
            start_new_session=True,
        )
    proc = Proc(popen, argv, netns, Path(cgroup) if cgroup is not None else None, log_path)
    if pid_file is not None:
        record = {"pid": proc.pid, "start_time": start_time(proc.pid), "argv": argv, "command": full}
        with open(pid_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    return proc


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    netns: str | None = None,
    cgroup: str | Path | None = None,
    timeout: float = 30.0,
    check: bool = False,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command in `netns`/`cgroup` and capture its output (text).

    Raises subprocess.TimeoutExpired after `timeout` (the command and its process group are killed
    first) and, with `check`, subprocess.CalledProcessError on a non-zero exit.
    """
    argv = [os.fspath(a) for a in argv]
    _check_netns(netns)
    popen = subprocess.Popen(
        _command_line(argv, netns, cgroup),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        env=_environment(env),
        cwd=cwd,
        start_new_session=True,
    )
    with popen:
        try:
            stdout, stderr = popen.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it exited just now
            popen.communicate(timeout=5.0)
            raise
    result = subprocess.CompletedProcess(argv, popen.returncode, stdout, stderr)
    if check:
        result.check_returncode()
    return result


class ProcessGroup:
    """Owner of the processes it spawns: stops them all, in reverse order of start, on exit."""

    def __init__(self, pid_file: Path | None = None) -> None:
        self.pid_file = pid_file
        self.procs: list[Proc] = []

    def spawn(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        netns: str | None = None,
        cgroup: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path,
        cwd: str | Path | None = None,
    ) -> Proc:
        proc = spawn(argv, netns=netns, cgroup=cgroup, env=env, log_path=log_path, cwd=cwd, pid_file=self.pid_file)
        self.procs.append(proc)
        return proc

    def stop_all(self, timeout: float = 5.0) -> None:
        """Stop every process (reverse order); raise an ExceptionGroup of what failed, after trying them all."""
        errors: list[Exception] = []
        while self.procs:
            proc = self.procs.pop()
            try:
                proc.stop(timeout)
            except Exception as exc:  # noqa: BLE001 - collected and re-raised below
                exc.add_note(f"while stopping {proc}")
                errors.append(exc)
        if errors:
            raise ExceptionGroup("some processes could not be stopped", errors)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()
