"""The compiler process: `python -m agent.datapath.compiler --bpf-dir DIR --socket-fd N`.

A short-lived child of the agent (started by compilation.py) and the only process that imports
bcc. It checks what BCC needs (bcc itself, the kernel headers), compiles bpf/*.c, loads every
program (the verifier runs here) and creates the maps, checks the struct layouts against
agent/datapath/layout.py, then hands the program and map fds to the agent over the socket
(handoff.py) and exits. The agent attaches the programs and uses the maps; this process, with
libbcc and LLVM in it, is gone by then.

Every failure the operator can act on is answered as a failure record with the DatapathError's
message (exit status 1); anything else also writes its traceback to stderr, which the agent
logs (exit status 2). The process dies with the agent (PR_SET_PDEATHSIG), and the agent kills it
if it takes too long.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from agent.datapath import handoff, layout, libbpf, loader, prerequisites
from agent.datapath.errors import DatapathError
from agent.datapath.programs import HEADER

EXIT_REPORTED = 1    # a DatapathError, answered as a failure record
EXIT_UNEXPECTED = 2  # a bug or an unforeseen error: traceback on stderr
_PR_SET_PDEATHSIG = 1


def compile_and_load(bpf_dir: Path) -> handoff.KernelObjects:
    """Everything that needs BCC, in order; returns the loaded programs and created maps."""
    loader.import_bcc()
    prerequisites.check_kernel_headers()
    try:
        lib = libbpf.Libbpf()
    except OSError as exc:
        raise DatapathError(str(exc)) from exc
    programs = loader.load(bpf_dir, lib=lib)
    problems = layout.check_layouts(programs.maps)
    if problems:
        raise DatapathError(f"the struct layouts of bpf/{HEADER} and agent/datapath/layout.py differ "
                            "(change both together): " + "; ".join(problems))
    # The fds stay open until this process exits, after the handoff; BCC's module with them.
    return handoff.KernelObjects(prog_fds=dict(programs.prog_fds), map_fds=dict(programs.map_fds))


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the thread that started it exits (a killed agent leaves no
    compiler behind); exits at once if that parent is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent:
        sys.exit(EXIT_UNEXPECTED)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.datapath.compiler",
                                     description="the agent's BPF compiler process")
    parser.add_argument("--bpf-dir", type=Path, required=True, help="directory of clusterlink.h and the programs")
    parser.add_argument("--socket-fd", type=int, required=True, help="inherited SOCK_SEQPACKET socket to answer on")
    parser.add_argument("--parent", type=int, required=True, help="pid of the agent (the process dies with it)")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    sock = socket.socket(fileno=args.socket_fd)
    with sock:
        try:
            objects = compile_and_load(args.bpf_dir)
        except DatapathError as exc:
            handoff.send_failure(sock, str(exc))
            return EXIT_REPORTED
        except Exception as exc:  # a bug or the unforeseen: the traceback is for the agent's log
            traceback.print_exc()
            handoff.send_failure(sock, f"the compiler process failed unexpectedly: {type(exc).__name__}: {exc} "
                                       "(its traceback is in the log)")
            return EXIT_UNEXPECTED
        handoff.send_objects(sock, objects.prog_fds, objects.map_fds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
