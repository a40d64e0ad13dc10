"""A minimal BPF program attached to a cgroup the legacy way (no link: it outlives its loader), through ctypes."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8
BPF_PROG_TYPE_CGROUP_SKB = 8
BPF_CGROUP_INET_EGRESS = 1
BPF_F_ALLOW_MULTI = 2
ATTR_SIZE = 128


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(SYS_BPF, cmd, attr, ATTR_SIZE)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return result


def attach_legacy_egress_program(cgroup: Path, name: bytes = b"cltest_egress") -> int:
    """Load `r0 = 1; exit` (allow every packet) and attach it to `cgroup`'s egress; return the program's fd."""
    insns = ctypes.create_string_buffer(struct.pack("<BBhi", 0xB7, 0, 0, 1) + struct.pack("<BBhi", 0x95, 0, 0, 0))
    license_ = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into(
        "<IIQQIIQII16sII", attr, 0,
        BPF_PROG_TYPE_CGROUP_SKB, 2, ctypes.addressof(insns), ctypes.addressof(license_),
        0, 0, 0, 0, 0, name[:15], 0, BPF_CGROUP_INET_EGRESS,
    )
    prog_fd = _bpf(BPF_PROG_LOAD, attr)
    cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attach = ctypes.create_string_buffer(ATTR_SIZE)
        struct.pack_into("<IIII", attach, 0, cgroup_fd, prog_fd, BPF_CGROUP_INET_EGRESS, BPF_F_ALLOW_MULTI)
        _bpf(BPF_PROG_ATTACH, attach)
    finally:
        os.close(cgroup_fd)
    return prog_fd
