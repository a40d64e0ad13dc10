"""Handing BPF program and map fds from the compiler process to the agent over a unix socket.

One SOCK_SEQPACKET record carries the whole answer: a small JSON document and, for a success,
the fds as SCM_RIGHTS ancillary data, in the order the document names them:

    {"v": 1, "ok": true, "programs": ["cl_connect4", ...], "maps": ["cl_services", ...]}  + fds
    {"v": 1, "ok": false, "error": "<what went wrong, for the operator>"}                   no fds

The kernel duplicates the fds into the receiver when it reads the record, so the programs and
maps live on after the sender exits. Received fds are close-on-exec (MSG_CMSG_CLOEXEC), like every
fd the bpf(2) syscall creates, so the agent's own subprocesses never inherit them.

`encode_*`/`decode` are the message format; `send_*`/`receive` do the socket I/O.
"""

from __future__ import annotations

import array
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.datapath.errors import DatapathError

VERSION = 1
MAX_MESSAGE = 64 * 1024  # the answer is a few hundred bytes; an error message is truncated to fit
MAX_FDS = 64  # SCM_RIGHTS takes at most 253 per message; we send 7
_FD_SIZE = array.array("i").itemsize  # SCM_RIGHTS carries C ints


@dataclass
class KernelObjects:
    """Loaded (not attached) programs and created maps, by name; owns the fds until close()."""

    prog_fds: dict[str, int] = field(default_factory=dict)
    map_fds: dict[str, int] = field(default_factory=dict)

    def fds(self) -> list[int]:
        return [*self.prog_fds.values(), *self.map_fds.values()]

    def close(self) -> None:
        """Close every fd (idempotent); the kernel frees a program or map with its last fd."""
        fds = self.fds()
        self.prog_fds, self.map_fds = {}, {}
        for fd in fds:
            os.close(fd)


# -- the message format (no I/O) ------------------------------------------------------------------

def encode_objects(prog_fds: Mapping[str, int], map_fds: Mapping[str, int]) -> tuple[bytes, list[int]]:
    """The success record: its bytes and the fds to attach to it, in the order the bytes name them."""
    payload = json.dumps({"v": VERSION, "ok": True, "programs": list(prog_fds), "maps": list(map_fds)})
    return payload.encode(), [*prog_fds.values(), *map_fds.values()]


def encode_failure(message: str) -> bytes:
    """The failure record (the message is cut to fit one record)."""
    budget = MAX_MESSAGE - 256
    if len(message.encode()) > budget:
        message = message.encode()[:budget].decode(errors="ignore") + " [...]"
    return json.dumps({"v": VERSION, "ok": False, "error": message}).encode()


def decode(payload: bytes, fds: list[int]) -> KernelObjects:
    """The objects a success record names (taking ownership of fds), or DatapathError with the
    compiler process's own message for a failure record. Raises DatapathError on a malformed
    record; the caller still owns fds then."""
    try:
        doc = json.loads(payload)
    except ValueError as exc:
        raise DatapathError(f"the compiler process sent a malformed answer ({exc}): {payload[:200]!r}") from None
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise DatapathError(f"the compiler process sent an answer of an unknown version: {payload[:200]!r}")
    if doc.get("ok") is False:
        if fds:
            raise DatapathError(f"the compiler process sent {len(fds)} fds with a failure: {payload[:200]!r}")
        error = doc.get("error")
        raise DatapathError(error if isinstance(error, str) and error else f"the compiler process failed: {doc!r}")
    programs, maps = doc.get("programs"), doc.get("maps")
    if (doc.get("ok") is not True or not isinstance(programs, list) or not isinstance(maps, list)
            or not all(isinstance(n, str) for n in (*programs, *maps))):
        raise DatapathError(f"the compiler process sent a malformed answer: {payload[:200]!r}")
    names = [*programs, *maps]
    if len(names) != len(fds) or len(set(programs)) != len(programs) or len(set(maps)) != len(maps):
        raise DatapathError(f"the compiler process named {len(programs)} programs and {len(maps)} maps "
                            f"(some twice?) but sent {len(fds)} fds: {payload[:200]!r}")
    return KernelObjects(prog_fds=dict(zip(programs, fds[:len(programs)])),
                         map_fds=dict(zip(maps, fds[len(programs):])))


# -- socket I/O -----------------------------------------------------------------------------------

def socketpair() -> tuple[socket.socket, socket.socket]:
    """(the agent's end, the compiler process's end); both close-on-exec (pass the second one on
    explicitly, e.g. with subprocess's pass_fds, which makes it inheritable in the child only)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send_objects(sock: socket.socket, prog_fds: Mapping[str, int], map_fds: Mapping[str, int]) -> None:
    payload, fds = encode_objects(prog_fds, map_fds)
    socket.send_fds(sock, [payload], fds)


def send_failure(sock: socket.socket, message: str) -> None:
    sock.send(encode_failure(message))


def receive(sock: socket.socket) -> KernelObjects | None:
    """The one record waiting on sock (non-blocking): the objects, DatapathError for a failure or
    a malformed record (every fd received is closed then), or None when the sender closed its end
    without sending anything."""
    # Not socket.recv_fds: in Python 3.11 it drops its flags argument (no CLOEXEC, no DONTWAIT).
    try:
        payload, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * _FD_SIZE),
                                                  socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None  # nothing queued, and the sender is still connected (it has not answered)
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % _FD_SIZE])
    return _decode_received(payload, list(fds), flags)


def _decode_received(payload: bytes, fds: list[int], flags: int) -> KernelObjects | None:
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise DatapathError(f"the compiler process's answer was truncated (flags {flags:#x}, "
                                f"{len(payload)} bytes, {len(fds)} fds)")
        if not payload and not fds:
            return None  # end of stream: the sender closed without answering
        return decode(payload, fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
