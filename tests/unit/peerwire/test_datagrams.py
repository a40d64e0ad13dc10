"""Datagram capsules (RFC 9297/9298 framing) and the channel that lets a Stream carry a UDP flow."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.peerwire import datagrams as D
from controlplane.peerwire.stream import StreamError, TcpStream


@pytest.mark.parametrize("value, encoded", [
    (0, b"\x00"), (37, b"\x25"), (63, b"\x3f"), (64, b"\x40\x40"), (15293, b"\x7b\xbd"),
    (494878333, b"\x9d\x7f\x3e\x7d"), (151288809941952652, b"\xc2\x19\x7c\x5e\xff\x14\xe8\x8c"),
])
def test_varints_match_rfc9000_examples(value: int, encoded: bytes) -> None:
    assert D.encode_varint(value) == encoded
    assert D.decode_varint(encoded) == (value, len(encoded))
    assert D.decode_varint(encoded[:-1]) is None if len(encoded) > 1 else D.decode_varint(b"") is None


def test_a_datagram_capsule_is_type_length_context_payload() -> None:
    assert D.encode_datagram(b"hi") == b"\x00\x03\x00hi"
    assert D.CapsuleDecoder().feed(b"\x00\x03\x00hi") == [b"hi"]
    assert D.CapsuleDecoder().feed(b"\x00\x01\x00") == [b""]  # an empty datagram is a datagram


@given(st.lists(st.binary(max_size=3000), max_size=8), st.data())
def test_any_split_of_any_datagrams_decodes_to_the_same_datagrams(payloads: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(D.encode_datagram(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = D.CapsuleDecoder()
    out: list[bytes] = []
    last = 0
    for cut in [*cuts, len(wire)]:
        out += decoder.feed(wire[last:cut])
        last = cut
    assert out == payloads
    assert decoder.pending == 0


def test_unknown_capsules_and_contexts_are_skipped_not_fatal() -> None:
    decoder = D.CapsuleDecoder()
    unknown = D.encode_varint(0x2A) + D.encode_varint(3) + b"abc"
    other_context = b"\x00" + D.encode_varint(3) + b"\x02xy"
    assert decoder.feed(unknown + other_context + D.encode_datagram(b"ok")) == [b"ok"]
    assert decoder.skipped == 2


@pytest.mark.parametrize("wire, message", [
    (b"\x00" + D.encode_varint(D.MAX_CAPSULE + 1), "exceeds"),
    (b"\x00" + D.encode_varint(D.MAX_DATAGRAM + 2) + b"\x00" + bytes(D.MAX_DATAGRAM + 1), "UDP payload"),
    (b"\x00\x00", "without a context id"),
])
def test_garbage_is_a_clear_error(wire: bytes, message: str) -> None:
    with pytest.raises(D.CapsuleError, match=message):
        D.CapsuleDecoder().feed(wire)


def test_a_too_large_payload_is_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        D.encode_datagram(bytes(D.MAX_DATAGRAM + 1))


def test_a_stream_over_a_channel_sends_and_receives_datagrams() -> None:
    async def scenario() -> None:
        sent: list[bytes] = []
        closed: list[bool] = []
        stream = TcpStream()
        channel = D.DatagramChannel(stream, sent.append, peername=("10.0.0.1", 53),
                                    on_close=lambda: closed.append(True))
        assert stream.peername == ("10.0.0.1", 53)
        # Writing capsules (split anywhere) sends datagrams.
        wire = D.encode_datagram(b"one") + D.encode_datagram(b"two")
        stream.write(wire[:5])
        stream.write(wire[5:])
        assert sent == [b"one", b"two"] and channel.sent == 2
        # A delivered datagram is read as a capsule.
        assert channel.deliver(b"answer")
        assert D.CapsuleDecoder().feed(await stream.read()) == [b"answer"]
        # Paused (backpressure): dropped, counted, not queued.
        stream.pause_reading("test")
        assert not channel.deliver(b"lost")
        assert channel.dropped == 1
        stream.resume_reading("test")
        # end() (idle): EOF to the stream; its write_eof closes the channel.
        channel.end()
        assert await stream.read() == b""
        stream.write_eof()
        assert closed == [True] and channel.is_closing()
        await asyncio.sleep(0)
        assert not channel.deliver(b"late")

    asyncio.run(scenario())


def test_garbage_written_to_a_channel_fails_the_stream_and_sends_nothing() -> None:
    async def scenario() -> None:
        sent: list[bytes] = []
        closed: list[bool] = []
        stream = TcpStream()
        channel = D.DatagramChannel(stream, sent.append, on_close=lambda: closed.append(True))
        stream.write(b"\x00" + D.encode_varint(D.MAX_CAPSULE + 1))
        assert closed == [True] and sent == []
        with pytest.raises(StreamError):
            await stream.read()
        assert channel.is_closing()

    asyncio.run(scenario())


def test_a_send_error_is_a_drop_not_a_failure() -> None:
    async def scenario() -> None:
        def refuse(payload: bytes) -> None:
            raise ConnectionRefusedError(111, "refused")

        stream = TcpStream()
        channel = D.DatagramChannel(stream, refuse)
        stream.write(D.encode_datagram(b"x"))
        assert channel.dropped == 1 and not channel.is_closing()
        channel.close()

    asyncio.run(scenario())


def test_an_idle_channel_ends_its_stream_and_activity_postpones_it() -> None:
    async def scenario() -> None:
        closed: list[bool] = []
        stream = TcpStream()
        channel = D.DatagramChannel(stream, lambda payload: None, idle_timeout=0.2,
                                    on_close=lambda: closed.append(True))
        for _ in range(4):  # a datagram every 0.1 s keeps the flow alive past its timeout
            await asyncio.sleep(0.1)
            assert channel.deliver(b"ping")
        assert not channel.is_closing()
        assert D.CapsuleDecoder().feed(await stream.read()) == [b"ping"] * 4
        assert await asyncio.wait_for(stream.read(), 1.0) == b""  # idle: the stream sees an EOF
        assert not channel.deliver(b"late")  # nothing is taken after the end
        stream.write_eof()  # the other direction ends too: closed
        assert closed == [True]

    asyncio.run(scenario())


def test_receive_batch_goes_on_past_a_queued_icmp_error_and_stops_at_its_limit() -> None:
    import socket
    import time

    from controlplane.api.datagrams import receive_batch

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    server.close()  # nobody there: the next datagram gets an ICMP port unreachable
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.connect(("127.0.0.1", port))
    client.setblocking(False)
    client.send(b"to nobody")
    time.sleep(0.05)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", port))
    try:
        for i in range(5):
            server.sendto(b"%d" % i, client.getsockname())
        time.sleep(0.05)
        got: list[bytes] = []
        errors: list[OSError] = []
        receive_batch(client, lambda data, source: got.append(data), on_error=errors.append, limit=3)
        assert [type(e) for e in errors] == [ConnectionRefusedError] and got == [b"0", b"1"]
        receive_batch(client, lambda data, source: got.append(data), on_error=errors.append)
        assert got == [b"0", b"1", b"2", b"3", b"4"] and len(errors) == 1  # then it returns: nothing left
    finally:
        client.close()
        server.close()
