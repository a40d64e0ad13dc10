"""One compilation, seen from the agent: run the compiler process, bounded in time, and take over
the program and map fds it hands back.

The agent never imports bcc: `compile_in_child` starts `python -m agent.datapath.compiler` (the
same interpreter and the same agent package), waits at most `timeout` seconds for it to exit
(killing and reaping it after that), logs its output (BCC's and the compiler's messages, or a
traceback) and receives its answer (handoff.py). A failure in the child comes back as the
DatapathError the child raised; a crash, a kill or a missing answer as a DatapathError that says
so. `verify` then checks that the fds are what their names say, with the kernel's own view.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.datapath import handoff, layout, libbpf
from agent.datapath.errors import DatapathError
from agent.datapath.programs import PROGRAMS

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0  # a compile takes about 1 s; a busy machine can make it several
KILL_GRACE_S = 5.0        # after SIGKILL, to collect the last output before giving up on the pipe
MAX_LOGGED_OUTPUT = 64 * 1024

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory that holds agent/


def command(bpf_dir: Path, socket_fd: int) -> list[str]:
    """The compiler process's argv: this interpreter, without the current directory on its path."""
    return [sys.executable, "-P", "-m", "agent.datapath.compiler", "--bpf-dir", str(bpf_dir),
            "--socket-fd", str(socket_fd), "--parent", str(os.getpid())]


def environment() -> dict[str, str]:
    """Ours, with this agent package first on the path (so the child runs the same code even when
    the agent itself was started from a source tree)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def _output_hint(output: str) -> str:
    """Where to look, for an error message: the last line the child wrote (all of it is logged)."""
    lines = [line for line in output.splitlines() if line.strip()]
    return f"its output is in the log, ending with: {lines[-1].strip()}" if lines else "it wrote nothing"


def _log_output(level: int, pid: int, what: str, output: str) -> None:
    if not output.strip():
        return
    if len(output) > MAX_LOGGED_OUTPUT:
        output = f"[... {len(output) - MAX_LOGGED_OUTPUT} characters left out ...]\n" + output[-MAX_LOGGED_OUTPUT:]
    log.log(level, "The BPF compiler process (pid %d) %s; its output:\n%s", pid, what, output.rstrip())


def compile_in_child(bpf_dir: Path, *, timeout: float = DEFAULT_TIMEOUT_S, owner: str = "") -> handoff.KernelObjects:
    """Compile and load bpf_dir's programs in the compiler process; returns their fds (the
    caller owns them). Never leaves the child running or unreaped."""
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    ours, theirs = handoff.socketpair()
    with ours:
        argv = command(bpf_dir, theirs.fileno())
        started = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, pass_fds=(theirs.fileno(),), env=environment())
        except OSError as exc:
            raise DatapathError(f"cannot start the BPF compiler process ({argv[0]}): {exc}") from exc
        finally:
            theirs.close()  # the child has its copy; our end then sees EOF when it exits
        pid = proc.pid
        log.debug("BPF compiler process (pid %d) started for %s: %s", pid, owner or "a datapath", " ".join(argv))
        try:
            raw, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raw = _collect_after_kill(proc)
            output = raw.decode(errors="replace")
            _log_output(logging.ERROR, pid, f"was killed after {timeout:g} s", output)
            raise DatapathError(
                f"the BPF compiler process (pid {pid}) did not finish within {timeout:g} s and was killed "
                f"(a hung compile or a very busy machine; {_output_hint(output)})") from None
        except BaseException:
            proc.kill()  # interrupted (KeyboardInterrupt...): never leave it behind
            _collect_after_kill(proc)
            raise
        output = raw.decode(errors="replace")
        status = describe_status(proc.returncode)
        try:
            objects = handoff.receive(ours)
        except DatapathError:
            _log_output(logging.ERROR, pid, f"failed ({status})", output)
            raise
        if objects is None:
            _log_output(logging.ERROR, pid, f"ended without an answer ({status})", output)
            raise DatapathError(f"the BPF compiler process (pid {pid}) ended with {status} without handing over "
                                f"the programs ({_output_hint(output)})")
        if proc.returncode != 0:
            objects.close()
            _log_output(logging.ERROR, pid, f"answered but then ended with {status}", output)
            raise DatapathError(f"the BPF compiler process (pid {pid}) handed over the programs but then ended "
                                f"with {status}; not using them (its output is in the log)")
        _log_output(logging.WARNING, pid, "succeeded with messages", output)
        log.debug("BPF compiler process (pid %d) handed over %d programs and %d maps in %.2f s.", pid,
                  len(objects.prog_fds), len(objects.map_fds), time.monotonic() - started)
        return objects


def _collect_after_kill(proc: subprocess.Popen[bytes]) -> bytes:
    """Reap a killed child and return what it wrote; if a grandchild still holds the output pipe,
    give up on the pipe after KILL_GRACE_S but still reap the child."""
    try:
        raw, _ = proc.communicate(timeout=KILL_GRACE_S)
        return raw or b""
    except subprocess.TimeoutExpired:
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()
        return b""


def verify(objects: handoff.KernelObjects, lib: libbpf.Libbpf) -> None:
    """Check with the kernel that we got every program of PROGRAMS (by name and type) and every map
    of layout.MAPS with the key and value sizes of our Python mirrors; DatapathError otherwise."""
    try:
        problems = _problems(objects, lib)
    except OSError as exc:
        raise DatapathError(f"cannot inspect the BPF objects handed over by the compiler process: {exc}") from exc
    if problems:
        raise DatapathError("the BPF objects handed over by the compiler process are not what the agent expects: "
                            + "; ".join(problems))


def _problems(objects: handoff.KernelObjects, lib: libbpf.Libbpf) -> list[str]:
    problems: list[str] = []
    expected = {spec.name: spec for spec in PROGRAMS}
    for name in sorted(expected.keys() - objects.prog_fds.keys()):
        problems.append(f"program {name} is missing")
    for name in sorted(objects.prog_fds.keys() - expected.keys()):
        problems.append(f"program {name} is not one of ours")
    for name, fd in objects.prog_fds.items():
        spec = expected.get(name)
        if spec is None:
            continue
        info = lib.prog_info(fd)
        if info.name != name or info.type != spec.prog_type:
            problems.append(f"fd for program {name} is program {info.name!r} of type {info.type}, "
                            f"not type {spec.prog_type}")
    for name in sorted(layout.MAPS.keys() - objects.map_fds.keys()):
        problems.append(f"map {name} is missing")
    for name, fd in objects.map_fds.items():
        info = lib.map_info(fd)
        if info.name != name[:libbpf.BPF_OBJ_NAME_LEN - 1]:
            problems.append(f"fd for map {name} is map {info.name!r}")
        mirrors = layout.MAPS.get(name)
        if mirrors is None:
            continue
        key_size, value_size = (layout.layout_of(m).size for m in mirrors)
        if (info.key_size, info.value_size) != (key_size, value_size):
            problems.append(f"map {name} has {info.key_size}-byte keys and {info.value_size}-byte values, "
                            f"the Python mirrors {key_size} and {value_size}")
    return problems
