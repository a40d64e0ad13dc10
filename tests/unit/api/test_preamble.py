"""The agent→gateway preamble codec: round trips, incremental feeding, and garbage."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.api.preamble import MAX_BODY, Preamble, PreambleError, PreambleReader, encode_preamble

P = Preamble(import_namespace="default", import_name="reviews", destination="10.96.0.3:9080",
             client={"client.clusterlink.net/namespace": "default"}, credential="tok", node="n1")


def test_round_trip_with_trailing_application_bytes():
    reader = PreambleReader()
    got = reader.feed(encode_preamble(P) + b"GET / HTTP/1.1\r\n")
    assert got == P
    assert reader.rest == b"GET / HTTP/1.1\r\n"


def test_byte_by_byte():
    reader = PreambleReader()
    data = encode_preamble(P)
    results = [reader.feed(data[i:i + 1]) for i in range(len(data))]
    assert results[-1] == P and all(r is None for r in results[:-1])


@pytest.mark.parametrize("data, message", [
    (b"GET / HTTP/1.1\r\n", "does not start"),
    (b"CLP1" + struct.pack(">I", 0), "outside"),
    (b"CLP1" + struct.pack(">I", MAX_BODY + 1), "outside"),
    (b"CLP1" + struct.pack(">I", 3) + b"{x}", "not UTF-8 JSON"),
    (b"CLP1" + struct.pack(">I", 2) + b"[]", "JSON object"),
    (b"CLP1" + struct.pack(">I", 8) + b'{"v": 2}', "version"),
    (b"CLP1" + struct.pack(">I", 18) + b'{"v":1,"import":1}', "'import'"),
    (b"CLP1" + struct.pack(">I", 34) + b'{"v":1,"import":{"namespace":"a"}}', "must name the import"),
])
def test_garbage_is_a_clear_error(data, message):
    with pytest.raises(PreambleError, match=message):
        PreambleReader().feed(data)


def test_client_attributes_must_be_strings():
    body = b'{"v":1,"import":{"namespace":"a","name":"b"},"client":{"k":1}}'
    with pytest.raises(PreambleError, match="strings"):
        PreambleReader().feed(b"CLP1" + struct.pack(">I", len(body)) + body)


def test_encode_refuses_oversize():
    with pytest.raises(ValueError, match="exceeds"):
        encode_preamble(Preamble("a", "b", "c", client={"k": "v" * MAX_BODY}))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_fuzz_never_raises_anything_else(data):
    reader = PreambleReader()
    try:
        reader.feed(data)
    except PreambleError:
        pass
