"""What the datapath loads, as plain data: the program files, each program's hook, the ownership
prefix and where bpf/ is. Shared by the agent (which attaches) and the compiler process (which
compiles and loads); it imports nothing heavy, BCC least of all.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from agent.datapath import libbpf

HEADER = "clusterlink.h"
PROGRAM_PREFIX = "cl_"

# enum bpf_prog_type values (uapi) used below.
PROG_TYPE_CGROUP_SKB = 8
PROG_TYPE_CGROUP_SOCK = 9
PROG_TYPE_SOCK_OPS = 13
PROG_TYPE_CGROUP_SOCK_ADDR = 18


@dataclass(frozen=True)
class ProgramSpec:
    """One hook: its C function (also the kernel program name, at most 15 characters, starting
    with the ownership prefix), the file it lives in, and how it is loaded and attached."""

    name: str
    source: str
    prog_type: int
    attach_type: int


PROGRAMS: tuple[ProgramSpec, ...] = (
    ProgramSpec("cl_connect4", "connect4.c", PROG_TYPE_CGROUP_SOCK_ADDR, libbpf.BPF_CGROUP_INET4_CONNECT),
    ProgramSpec("cl_connect6", "connect6.c", PROG_TYPE_CGROUP_SOCK_ADDR, libbpf.BPF_CGROUP_INET6_CONNECT),
    ProgramSpec("cl_sendmsg4", "sendmsg4.c", PROG_TYPE_CGROUP_SOCK_ADDR, libbpf.BPF_CGROUP_UDP4_SENDMSG),
    ProgramSpec("cl_recvmsg4", "recvmsg4.c", PROG_TYPE_CGROUP_SOCK_ADDR, libbpf.BPF_CGROUP_UDP4_RECVMSG),
    ProgramSpec("cl_sendmsg6", "sendmsg6.c", PROG_TYPE_CGROUP_SOCK_ADDR, libbpf.BPF_CGROUP_UDP6_SENDMSG),
    ProgramSpec("cl_recvmsg6", "recvmsg6.c", PROG_TYPE_CGROUP_SOCK_ADDR, libbpf.BPF_CGROUP_UDP6_RECVMSG),
    ProgramSpec("cl_egress", "egress.c", PROG_TYPE_CGROUP_SKB, libbpf.BPF_CGROUP_INET_EGRESS),
    ProgramSpec("cl_sockops", "sockops.c", PROG_TYPE_SOCK_OPS, libbpf.BPF_CGROUP_SOCK_OPS),
    ProgramSpec("cl_getpeername4", "getpeername4.c", PROG_TYPE_CGROUP_SOCK_ADDR,
                libbpf.BPF_CGROUP_INET4_GETPEERNAME),
    ProgramSpec("cl_getpeername6", "getpeername6.c", PROG_TYPE_CGROUP_SOCK_ADDR,
                libbpf.BPF_CGROUP_INET6_GETPEERNAME),
    ProgramSpec("cl_sock_release", "sock_release.c", PROG_TYPE_CGROUP_SOCK,
                libbpf.BPF_CGROUP_INET_SOCK_RELEASE),
)


def default_bpf_dir() -> Path:
    """bpf/ at the root of the source tree (agent/datapath/programs.py -> ../../bpf), or, for an
    installed wheel, <prefix>/share/clusterlink/bpf (its data files)."""
    tree = Path(__file__).resolve().parents[2] / "bpf"
    if (tree / "clusterlink.h").exists():
        return tree
    return Path(sys.prefix) / "share" / "clusterlink" / "bpf"
