"""Framed tunnels, sans-IO: an extension of CONNECT that lets a tunnel carry one application
connection and then go back to HTTP keep-alive, ready for the next one.

A raw CONNECT tunnel (the original protocol) ends its TLS connection with the application
connection: the end of data of each direction is the TLS close_notify. Each new application
connection then needs a new TLS connection between the gateways (a handshake of CPU on both
sides, even resumed and off the critical path). With framing, the end of data is a frame
instead, so the TLS connection survives and returns to the pool.

Negotiation, compatible with peers that do not know it: a gateway announces support with the
response header `x-clusterlink-tunnel: framed-2` (on /healthz, /authz and CONNECT answers); a
client that saw it may send `CONNECT` with the same header, and the tunnel is framed only if the
200 carries it too. Anyone else ignores the header and gets a raw tunnel.

Frames, in both directions after the 200: a 4-byte big-endian word; high bit 0: a data frame
whose payload is the following `word` bytes (1 .. MAX_FRAME); high bit 1: a control frame without
payload, `word & 0x7fffffff` = 0: end of data (half-close), 1: reset (the application connection
was reset: the receiver resets its side too and the TLS connection is closed, not reused),
2: heartbeat (nothing; the deframer drops it). When both directions ended, the connection speaks
HTTP again (a new request/response cycle).

Heartbeats (framed-2; framed-1, an earlier version of ours, had none, and a peer announcing it
gets raw tunnels): while its sending direction is open, each side sends a heartbeat whenever it
sent nothing for HEARTBEAT_INTERVAL, so a receiver whose direction is open and who is reading
(not holding back for backpressure) knows the other gateway is gone, frozen or cut off when
nothing at all arrives for a few intervals (see `gateway.relay.Relay.check_liveness`).
"""

from __future__ import annotations

import struct

TUNNEL_HEADER = "x-clusterlink-tunnel"
FRAMED = "framed-2"
HEARTBEAT_INTERVAL = 2.0  # seconds: the longest a sender stays silent while its direction is open
MAX_FRAME = (1 << 24) - 1

_WORD = struct.Struct(">I")
_CONTROL = 0x80000000
EOF_FRAME = _WORD.pack(_CONTROL | 0)
RESET_FRAME = _WORD.pack(_CONTROL | 1)
HEARTBEAT_FRAME = _WORD.pack(_CONTROL | 2)

DATA = "data"
EOF = "eof"
RESET = "reset"


class FramingError(ValueError):
    """The other side sent something that is not a valid frame sequence."""


def data_header(length: int) -> bytes:
    if not 0 < length <= MAX_FRAME:
        raise ValueError(f"a data frame carries 1..{MAX_FRAME} bytes, not {length}")
    return _WORD.pack(length)


def frame(payload: bytes | bytearray | memoryview) -> bytes:
    """A whole data frame (header and payload) in one piece."""
    return data_header(len(payload)) + bytes(payload)


class Deframer:
    """Splits a framed byte stream into events: (DATA, payload view), (EOF, None), (RESET, None).

    Payload views point into the fed buffer (no copy) and are valid until the caller returns.
    After EOF or RESET the deframer stops: `feed` returns the bytes that followed in `rest`
    (they belong to whatever comes next on the connection, e.g. the next HTTP request).
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._remaining = 0  # payload bytes still expected in the current data frame
        self.finished: str | None = None
        self.rest = b""

    def feed(self, view: memoryview) -> list[tuple[str, memoryview | None]]:
        if self.finished is not None:
            raise FramingError(f"data after the end of the framed tunnel ({self.finished})")
        size = len(view)
        if not self._remaining and not self._header and size > 4:
            (word,) = _WORD.unpack_from(view)
            if word + 4 == size and word <= MAX_FRAME:  # the common case: exactly one whole data frame
                return [(DATA, view[4:])]
        events: list[tuple[str, memoryview | None]] = []
        position = 0
        while position < size:
            if self._remaining:
                take = min(self._remaining, size - position)
                events.append((DATA, view[position:position + take]))
                self._remaining -= take
                position += take
                continue
            if not self._header and size - position >= 4:
                (word,) = _WORD.unpack_from(view, position)
                position += 4
            else:
                need = 4 - len(self._header)
                piece = view[position:position + need]
                self._header += piece
                position += len(piece)
                if len(self._header) < 4:
                    break
                (word,) = _WORD.unpack(self._header)
                self._header.clear()
            if word & _CONTROL:
                code = word & ~_CONTROL
                if code == 2:  # a heartbeat: nothing to deliver
                    continue
                if code == 0:
                    self.finished = EOF
                elif code == 1:
                    self.finished = RESET
                else:
                    raise FramingError(f"unknown control frame {code}")
                events.append((self.finished, None))
                self.rest = bytes(view[position:])
                return events
            if word == 0:
                raise FramingError("empty data frame")
            if word > MAX_FRAME:
                raise FramingError(f"data frame of {word} bytes exceeds {MAX_FRAME}")
            self._remaining = word
        return events

    @property
    def idle(self) -> bool:
        """Between frames (no partial header or payload pending)."""
        return not self._header and not self._remaining
