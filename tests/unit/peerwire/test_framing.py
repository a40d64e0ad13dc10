"""Framed tunnels (sans-IO): frame building and the deframer, under every split of the input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.peerwire.framing import (
    DATA,
    EOF,
    EOF_FRAME,
    HEARTBEAT_FRAME,
    MAX_FRAME,
    RESET_FRAME,
    Deframer,
    FramingError,
    data_header,
    frame,
)


def run(chunks: list[bytes]) -> tuple[bytes, str | None, bytes]:
    deframer = Deframer()
    payload = bytearray()
    for chunk in chunks:
        for kind, view in deframer.feed(memoryview(chunk)):
            if kind == DATA:
                assert view is not None
                payload += view
        if deframer.finished:
            break
    return bytes(payload), deframer.finished, deframer.rest


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=6), st.binary(max_size=40),
       st.lists(st.integers(0, 10_000), max_size=12), st.sampled_from([EOF_FRAME, RESET_FRAME]))
def test_any_split_gives_the_same_events(messages: list[bytes], after: bytes, cuts: list[int], end: bytes) -> None:
    wire = b"".join(frame(m) for m in messages) + end + after
    payload, finished, rest = run(split(wire, cuts))
    assert payload == b"".join(messages)
    assert finished == (EOF if end == EOF_FRAME else "reset")
    # what follows the end is handed back, whichever chunk it came in
    assert after.startswith(rest) or rest == after


def test_rest_after_eof_is_the_next_request() -> None:
    deframer = Deframer()
    events = deframer.feed(memoryview(frame(b"bye") + EOF_FRAME + b"GET /healthz HTTP/1.1\r\n"))
    assert [(k, bytes(v) if v is not None else None) for k, v in events] == [(DATA, b"bye"), (EOF, None)]
    assert deframer.rest == b"GET /healthz HTTP/1.1\r\n"
    with pytest.raises(FramingError):
        deframer.feed(memoryview(b"more"))


def test_payload_views_do_not_copy() -> None:
    buffer = bytearray(frame(b"x" * 1000))
    (kind, view), = Deframer().feed(memoryview(buffer))
    assert kind == DATA and view is not None and view.obj is buffer


@pytest.mark.parametrize("wire", [b"\x00\x00\x00\x00", b"\x80\x00\x00\x07", (MAX_FRAME + 1).to_bytes(4, "big")])
def test_bad_frames(wire: bytes) -> None:
    with pytest.raises(FramingError):
        Deframer().feed(memoryview(wire))


def test_data_header_bounds() -> None:
    assert data_header(1) == b"\x00\x00\x00\x01"
    with pytest.raises(ValueError):
        data_header(0)
    with pytest.raises(ValueError):
        data_header(MAX_FRAME + 1)


def test_idle_between_frames() -> None:
    deframer = Deframer()
    assert deframer.idle
    deframer.feed(memoryview(frame(b"abc")[:5]))
    assert not deframer.idle
    deframer.feed(memoryview(b"bc"))
    assert deframer.idle


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=6), st.lists(st.booleans(), max_size=7),
       st.lists(st.integers(0, 10_000), max_size=12))
def test_heartbeats_between_frames_deliver_nothing(messages: list[bytes], beats: list[bool], cuts: list[int]) -> None:
    """Heartbeats anywhere between frames, under any split, change nothing the receiver sees."""
    pieces = []
    for i, message in enumerate(messages):
        if i < len(beats) and beats[i]:
            pieces.append(HEARTBEAT_FRAME)
        pieces.append(frame(message))
    wire = HEARTBEAT_FRAME + b"".join(pieces) + HEARTBEAT_FRAME + EOF_FRAME + b"next"
    payload, finished, rest = run(split(wire, cuts))
    assert payload == b"".join(messages) and finished == EOF
    assert b"next".startswith(rest) or rest == b"next"


def test_only_heartbeats_is_no_event() -> None:
    deframer = Deframer()
    assert deframer.feed(memoryview(HEARTBEAT_FRAME * 3)) == [] and deframer.idle and deframer.finished is None
