"""Fuzzing the parsers that read what a remote peer or a local process sends, at volume: the HTTP
server side of the peer port, the client's CONNECT fast path (against h11 itself), the agent
preamble and the framed-tunnel deframer.

Every property holds under any split of the input into chunks (what TCP and TLS records do) and
under random mutation of valid input: the parser either produces what the unsplit, valid input
means, or refuses with its own error type; nothing else escapes, nothing hangs waiting for bytes
that a complete input already holds.

Examples per test: `CLUSTERLINK_FUZZ_EXAMPLES` (default 600 here; `make soak` runs 20,000).
"""

from __future__ import annotations

import json
import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.api.preamble import MAX_BODY, Preamble, PreambleError, PreambleReader, encode_preamble
from controlplane.peerwire.exchange import ClientConnection, ResponseError
from controlplane.peerwire.framing import (
    DATA,
    EOF,
    EOF_FRAME,
    HEARTBEAT_FRAME,
    MAX_FRAME,
    RESET,
    RESET_FRAME,
    Deframer,
    FramingError,
    frame,
)
from controlplane.peerwire.server import CLOSED, NEED_DATA, BadRequest, Request, ServerConnection

EXAMPLES = int(os.environ.get("CLUSTERLINK_FUZZ_EXAMPLES", "600"))
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cuts = st.lists(st.integers(0, 1 << 16), max_size=16)


def split(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(marks, marks[1:])] or [b""]


@st.composite
def mutated(draw, valid: bytes) -> bytes:  # type: ignore[no-untyped-def]
    """`valid` with a few random edits: flipped, inserted or deleted bytes, or truncation."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "special"]))
        if how == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif how == "truncate":
            del data[at:]
        else:
            data[at:at] = draw(st.sampled_from([b"\r\n", b"\n", b"\r", b"\x00", b":", b" ", b"\t", b"\xff",
                                                b"\r\n\r\n", b"Content-Length: 5\r\n",
                                                b"Transfer-Encoding: chunked\r\n"]))
    return bytes(data)


# --- the peer port's HTTP server ---------------------------------------------------------------

token = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~"),
                min_size=1, max_size=20)
header_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=30)


@st.composite
def requests(draw) -> bytes:  # type: ignore[no-untyped-def]
    """A valid pipeline of requests as our peers and original ClusterLink peers send them; a
    CONNECT, if any, is last (after it the connection is a tunnel)."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 4))):
        method = draw(st.sampled_from(["GET", "POST"]))
        path = "/" + draw(st.sampled_from(["healthz", "authz", "x"]))
        body = draw(st.binary(max_size=64)) if method == "POST" else b""
        headers = [(draw(token), draw(header_value)) for _ in range(draw(st.integers(0, 3)))]
        headers = [("Host", draw(token))] + [(k, v) for k, v in headers if k.lower() not in (
            "content-length", "transfer-encoding", "host", "connection", "expect")]
        if body or method == "POST":
            headers.append(("Content-Length", str(len(body))))
        out += f"{method} {path} HTTP/1.1\r\n".encode()
        out += b"".join(f"{k}: {v}\r\n".encode() for k, v in headers) + b"\r\n" + body
    if draw(st.booleans()):
        out += f"CONNECT west:443 HTTP/1.1\r\nHost: west:443\r\nAuthorization: Bearer {draw(token)}\r\n\r\n".encode()
        out += draw(st.binary(max_size=32))  # tunnel bytes: not the parser's
    return bytes(out)


def serve(chunks: list[bytes], eof: bool) -> tuple[list[tuple[str, str, tuple, bytes]], str]:
    """Feed `chunks` (then EOF) to a server connection answering everything: the requests it saw
    and how it ended ("need-data", "closed", "tunnel" or "bad <status>")."""
    conn = ServerConnection(max_header_bytes=1024, max_body_bytes=256)
    seen: list[tuple[str, str, tuple, bytes]] = []
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            conn.receive_data(chunk)
            while True:
                result = conn.next_request()
                if isinstance(result, Request):
                    seen.append((result.method, result.target, result.headers, result.body))
                    if result.method == "CONNECT":
                        conn.accept_connect()
                        return seen, "tunnel"
                    conn.respond(200, body=b"ok\n")
                    continue
                if result is CLOSED:
                    return seen, "closed"
                assert result is NEED_DATA
                break
    except BadRequest as exc:
        assert exc.status in (400, 413, 431), exc.status
        return seen, "bad"
    return seen, "need-data"


@fuzz
@given(requests(), cuts, st.booleans())
def test_server_sees_the_same_requests_under_any_split(wire: bytes, points: list[int], eof: bool) -> None:
    whole = serve([wire], eof)
    assert whole[1] in ("tunnel", "closed", "need-data"), whole  # valid input is never refused
    assert serve(split(wire, points), eof) == whole


@fuzz
@given(st.data(), cuts, st.booleans())
def test_server_refuses_mutated_requests_cleanly_and_independently_of_the_split(data, points, eof) -> None:  # type: ignore[no-untyped-def]
    wire = data.draw(requests().flatmap(mutated))
    whole = serve([wire], eof)
    pieces = serve(split(wire, points), eof)
    # The same requests come out; a refusal is a refusal either way (its status may be decided by
    # what had arrived, e.g. 431 for a header block that kept growing).
    assert pieces[0] == whole[0]
    assert (pieces[1] == "bad") == (whole[1] == "bad") or "need-data" in (pieces[1], whole[1])


# --- the client's CONNECT fast path, against h11 -----------------------------------------------

@st.composite
def connect_answers(draw) -> bytes:  # type: ignore[no-untyped-def]
    status = draw(st.sampled_from([200, 200, 200, 201, 204, 299, 100, 101, 302, 401, 403, 404, 502, 503]))
    reason = draw(st.sampled_from(["Connection Established", "OK", "", "Forbidden", "x y"]))
    lines = [f"HTTP/1.1 {status} {reason}".rstrip(" ") if reason or draw(st.booleans()) else f"HTTP/1.1 {status}"]
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["x-clusterlink-tunnel", "Server", "Date", draw(token)]))
        value = draw(st.sampled_from(["framed-2", "framed-1", " padded ", "a\tb", "", draw(header_value)]))
        lines.append(f"{name}:{draw(st.sampled_from([' ', '', '  ', chr(9)]))}{value}")
    body = b""
    if status >= 300 or draw(st.integers(0, 9)) == 0:
        body = draw(st.binary(max_size=40))
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines).encode() + b"\r\n\r\n"
    return head + body + draw(st.binary(max_size=24))  # then tunnel bytes (or the next answer)


def client_outcome(chunks: list[bytes], eof: bool, *, fast: bool) -> tuple:
    conn = ClientConnection("west")
    if fast:
        conn.connect("tok-123", framed=True)
    else:  # the same CONNECT through h11 all the way: the reference
        conn._connecting = True
        conn._request("CONNECT", *conn._connect_request("tok-123", True))
    try:
        for chunk in [*chunks, *([b""] if eof else [])]:
            conn.receive_data(chunk)
            result = conn.next_response()
            if result is NEED_DATA:
                continue
            if conn.switched:
                return ("tunnel", result.status, result.reason, result.headers, conn.trailing_data)
            return ("answer", result.status, result.reason, result.headers, result.body)
    except ResponseError:
        return ("error",)
    return ("need-data",)


def tunnel_trailing_is_consistent(a: tuple, b: tuple) -> bool:
    """Trailing bytes depend on where the chunk that completed the head ended: compare all else."""
    return a[:4] == b[:4] if a[0] == "tunnel" == b[0] else a == b


@fuzz
@given(connect_answers(), cuts, st.booleans())
def test_fast_path_answers_exactly_as_h11_does(wire: bytes, points: list[int], eof: bool) -> None:
    chunks = split(wire, points)
    fast = client_outcome(chunks, eof, fast=True)
    slow = client_outcome(chunks, eof, fast=False)
    assert tunnel_trailing_is_consistent(fast, slow), (fast, slow)
    if fast[0] == "tunnel":  # the bytes after the head are handed on (those of the completing chunk)
        whole = client_outcome([wire], eof, fast=True)
        assert whole[:4] == fast[:4] and whole[4].startswith(fast[4])


@fuzz
@given(st.data(), cuts, st.booleans())
def test_fast_path_agrees_with_h11_on_mutated_answers(data, points, eof) -> None:  # type: ignore[no-untyped-def]
    wire = data.draw(connect_answers().flatmap(mutated))
    chunks = split(wire, points)
    fast = client_outcome(chunks, eof, fast=True)
    slow = client_outcome(chunks, eof, fast=False)
    assert tunnel_trailing_is_consistent(fast, slow), (wire, fast, slow)


# --- the agent preamble ------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
preambles = st.builds(Preamble, import_namespace=names.filter(bool), import_name=names.filter(bool),
                      destination=names, client=st.dictionaries(names, names, max_size=5), credential=names,
                      node=names)


def read_preamble(chunks: list[bytes]) -> tuple:
    reader = PreambleReader()
    try:
        for chunk in chunks:
            got = reader.feed(chunk)
            if got is not None:
                return ("preamble", got, reader.rest)
    except PreambleError:
        return ("error",)
    return ("need-data",)


@fuzz
@given(preambles, st.binary(max_size=64), cuts)
def test_preamble_round_trips_under_any_split(p: Preamble, after: bytes, points: list[int]) -> None:
    wire = encode_preamble(p) + after
    outcome = read_preamble(split(wire, points))
    assert outcome[:2] == ("preamble", p)
    assert after.startswith(outcome[2])  # what followed is handed on (that of the completing chunk)


@fuzz
@given(st.data(), cuts)
def test_mutated_preambles_are_refused_or_read_alike_under_any_split(data, points) -> None:  # type: ignore[no-untyped-def]
    wire = data.draw(preambles.map(encode_preamble).flatmap(mutated))
    whole = read_preamble([wire])
    pieces = read_preamble(split(wire, points))
    if whole[0] == "preamble":
        assert pieces[:2] == whole[:2]
        p = whole[1]
        assert all(isinstance(x, str) for x in (p.import_namespace, p.import_name, p.destination, p.node))
    else:  # an error may be seen before the whole length has arrived; "need-data" only when short
        assert pieces[0] in (whole[0], "error")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | names,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
                           max_leaves=12)


@fuzz
@given(st.fixed_dictionaries({}, optional={"v": st.sampled_from([1, 1, 2, "1", None]) | json_values,
                                           "import": st.fixed_dictionaries(
                                               {}, optional={"namespace": json_values | names,
                                                             "name": json_values | names}) | json_values,
                                           "dst": json_values, "client": json_values,
                                           "credential": json_values, "node": json_values}))
def test_preamble_bodies_of_any_json_shape(body: dict) -> None:
    raw = json.dumps(body).encode()
    if len(raw) > MAX_BODY:
        return
    outcome = read_preamble([b"CLP1" + struct.pack(">I", len(raw)) + raw])
    assert outcome[0] in ("preamble", "error")
    if outcome[0] == "preamble":
        p = outcome[1]
        assert p.import_namespace and p.import_name and body.get("v") == 1
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in p.client.items())


# --- framed tunnels ----------------------------------------------------------------------------

@st.composite
def framed_streams(draw) -> tuple[bytes, bytes, str]:  # type: ignore[no-untyped-def]
    """(wire, payload, end): data frames and heartbeats, then EOF or RESET, then what follows."""
    wire, payload = bytearray(), bytearray()
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 3)) == 0:
            wire += HEARTBEAT_FRAME
        else:
            chunk = draw(st.binary(min_size=1, max_size=200))
            wire += frame(chunk)
            payload += chunk
    end = draw(st.sampled_from([EOF, RESET]))
    wire += EOF_FRAME if end == EOF else RESET_FRAME
    return bytes(wire) + draw(st.binary(max_size=32)), bytes(payload), end


def deframe(chunks: list[bytes]) -> tuple:
    d = Deframer()
    payload = bytearray()
    try:
        for chunk in chunks:
            for kind, view in d.feed(memoryview(chunk)):
                if kind == DATA:
                    payload += view
            if d.finished:
                return ("end", bytes(payload), d.finished, d.rest)
    except FramingError:
        return ("error", bytes(payload))
    return ("open", bytes(payload))


@fuzz
@given(framed_streams(), cuts)
def test_deframer_delivers_the_payload_and_the_end_under_any_split(stream, points) -> None:  # type: ignore[no-untyped-def]
    wire, payload, end = stream
    outcome = deframe(split(wire, points))
    assert outcome[:3] == ("end", payload, end)
    assert deframe([wire])[3].startswith(outcome[3])  # what follows the end, from the completing chunk


@fuzz
@given(st.data(), cuts)
def test_deframer_on_mutated_streams_never_delivers_more_than_arrived(data, points) -> None:  # type: ignore[no-untyped-def]
    wire = data.draw(framed_streams().map(lambda s: s[0]).flatmap(mutated))
    whole = deframe([wire])
    pieces = deframe(split(wire, points))
    # The same ending (end, refusal or still open) whatever the split, and the same bytes, except
    # that a refusal drops what arrived in the same read as the bad word (the tunnel is reset
    # anyway): then the payloads are prefixes of one another, never different bytes.
    assert pieces[0] == whole[0], (wire, pieces, whole)
    if whole[0] == "error":
        short, long = sorted((pieces[1], whole[1]), key=len)
        assert long.startswith(short), (wire, pieces, whole)
    else:
        assert pieces[:3] == whole[:3], (wire, pieces, whole)
    if whole[0] == "end":
        assert whole[3].startswith(pieces[3])


@fuzz
@given(st.integers(MAX_FRAME + 1, 0x7FFFFFFF) | st.just(0) | st.integers(3, 0x7FFFFFFF).map(lambda c: c | 0x80000000))
def test_deframer_refuses_impossible_words(word: int) -> None:
    outcome = deframe([struct.pack(">I", word) + b"x" * 8])
    assert outcome[0] == "error"
