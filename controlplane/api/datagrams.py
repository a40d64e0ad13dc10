"""Datagram capsules, sans-IO: how a byte stream carries one UDP flow, between an agent and its
gateway and between gateways alike.

Modelled on CONNECT-UDP (RFC 9298) over the Capsule Protocol (RFC 9297): the stream is a sequence
of capsules, each `Type (varint) | Length (varint) | Value`, with QUIC variable-length integers
(RFC 9000 section 16: the two high bits of the first byte give the length, 1/2/4/8 bytes). A
DATAGRAM capsule (type 0x00) holds `Context ID (varint) | UDP payload`; context 0 is the UDP
payload itself. Receivers skip capsules of other types and datagrams of other contexts (as the RFCs
say), and refuse a capsule longer than `MAX_CAPSULE` or a UDP payload longer than `MAX_DATAGRAM`
(`CapsuleError`: the sender is broken, the flow is reset).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

DATAGRAM_CAPSULE = 0x00
MAX_DATAGRAM = 65527  # the largest UDP payload (65535 - the 8-byte UDP header)
MAX_CAPSULE = 1 << 20  # the longest capsule of any type a receiver reads (or skips)
_VARINT_MAX = (1 << 62) - 1


class CapsuleError(ValueError):
    """The bytes are not a valid capsule sequence (or exceed our limits)."""


def encode_varint(value: int) -> bytes:
    if value < 0 or value > _VARINT_MAX:
        raise ValueError(f"{value} does not fit a variable-length integer")
    if value < 1 << 6:
        return bytes((value,))
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


def decode_varint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """(value, offset after it), or None when `data` ends before the integer does."""
    if offset >= len(data):
        return None
    first = data[offset]
    size = 1 << (first >> 6)
    if offset + size > len(data):
        return None
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | data[offset + i]
    return value, offset + size


def encode_datagram(payload: bytes | bytearray | memoryview) -> bytes:
    """One DATAGRAM capsule (context 0) carrying `payload`."""
    if len(payload) > MAX_DATAGRAM:
        raise ValueError(f"a UDP payload of {len(payload)} bytes exceeds {MAX_DATAGRAM}")
    # context id 0 is one byte
    return encode_varint(DATAGRAM_CAPSULE) + encode_varint(len(payload) + 1) + b"\x00" + bytes(payload)


class CapsuleDecoder:
    """Bytes in (any split), UDP payloads out. Holds at most one incomplete capsule."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.skipped = 0  # capsules of other types, datagrams of other contexts

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while True:
            head = decode_varint(buf, pos)
            if head is None:
                break
            ctype, after_type = head
            length_at = decode_varint(buf, after_type)
            if length_at is None:
                break
            length, start = length_at
            if length > MAX_CAPSULE:
                raise CapsuleError(f"a capsule of {length} bytes exceeds the {MAX_CAPSULE}-byte limit")
            end = start + length
            if end > len(buf):
                break
            pos = end
            if ctype != DATAGRAM_CAPSULE:
                self.skipped += 1
                continue
            context = decode_varint(buf, start)
            if context is None or context[1] > end:
                raise CapsuleError("a DATAGRAM capsule without a context id")
            if context[0] != 0:
                self.skipped += 1
                continue
            payload = bytes(buf[context[1]:end])
            if len(payload) > MAX_DATAGRAM:
                raise CapsuleError(f"a UDP payload of {len(payload)} bytes exceeds {MAX_DATAGRAM}")
            out.append(payload)
        if pos:
            del buf[:pos]
        if len(buf) > MAX_CAPSULE + 16:  # cannot happen with the check above; a guard all the same
            raise CapsuleError("an incomplete capsule exceeds the limit")
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete capsule held."""
        return len(self._buf)


RECV_BATCH = 64  # datagrams read per readiness callback: one busy socket cannot starve the loop


def receive_batch(sock: socket.socket, handle: Callable[[bytes, Any], None], *,
                  on_error: Callable[[OSError], None] | None = None, limit: int = RECV_BATCH) -> None:
    """Read what a non-blocking UDP socket holds, at most `limit` datagrams, handing each to
    `handle(payload, source address)`. A receive error (an ICMP error queued for an earlier
    datagram: ECONNREFUSED, EHOSTUNREACH) goes to `on_error` and the reading goes on: UDP is lossy,
    and one bad reply never stops a socket."""
    for _ in range(limit):
        try:
            data, source = sock.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if on_error is not None:
                on_error(exc)
            continue
        handle(data, source)
