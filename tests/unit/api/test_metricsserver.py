"""The /metrics listener: what a scraper, an idle or hostile client and the operator's log observe.

Real sockets on 127.0.0.1, port 0; every wait is bounded in time. The protocol functions are
checked directly, table-driven, and fuzzed with hypothesis.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from controlplane.api import metricsserver as ms

LOGGER = "controlplane.api.metricsserver"
WAIT = 5.0  # the longest any single wait in these tests may take


@pytest.fixture
def registry() -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("clusterlink_test_requests_total", "Requests", ["code"], registry=r).labels(code="200").inc(3)
    Gauge("clusterlink_test_open", "Open things", registry=r).set(7)
    return r


@pytest.fixture
def serve(registry: CollectorRegistry) -> Iterator[Callable[..., ms.MetricsServer]]:
    servers: list[ms.MetricsServer] = []

    def start(**options: float) -> ms.MetricsServer:
        server = ms.start_metrics_server(registry, "127.0.0.1", 0, **options)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def clients() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def connect(port: int, opened: list[socket.socket] | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    if opened is not None:
        opened.append(sock)
    return sock


def read_until_close(sock: socket.socket, limit: float = WAIT) -> bytes:
    """Everything the server sends until it closes (a reset counts as a close)."""
    deadline = time.monotonic() + limit
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"the server did not close the connection within {limit} s")


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as sock:
        sock.sendall(raw)
        return parse_response(read_until_close(sock))


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response: {data[:200]!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return int(status), headers, body


def wait_until(predicate: Callable[[], bool], limit: float = WAIT) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {limit} s")
        time.sleep(0.01)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def assert_one_clean_line(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    wait_until(lambda: len(warnings_of(caplog)) >= 1)
    time.sleep(0.05)  # nothing else follows
    records = warnings_of(caplog)
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].levelno == logging.WARNING and records[0].exc_info is None
    assert "Traceback" not in caplog.text
    return records[0]


# --- what a scraper sees ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/metrics", "/", "/metrics?name[]=x"])
def test_metrics_are_generate_latest(serve, registry: CollectorRegistry, path: str) -> None:
    server = serve()
    assert server.port > 0
    status, headers, body = exchange(server.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 200
    assert body == generate_latest(registry)
    assert b'clusterlink_test_requests_total{code="200"} 3.0' in body
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    assert headers["content-length"] == str(len(body))
    assert headers["connection"] == "close"
    assert server.stats.served == 1


def test_http_1_0_and_head(serve, registry: CollectorRegistry) -> None:
    server = serve()
    assert exchange(server.port, b"GET /metrics HTTP/1.0\r\n\r\n")[2] == generate_latest(registry)
    status, headers, body = exchange(server.port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and body == b""
    assert headers["content-length"] == str(len(generate_latest(registry)))


def test_probes_healthz_and_readyz_follow_the_components_check(serve) -> None:
    why: list[str | None] = ["no snapshot yet"]
    server = serve(ready=lambda: why[0])
    assert exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n")[::2] == (200, b"ok\n")
    status, headers, body = exchange(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")
    assert (status, body) == (503, b"not ready: no snapshot yet\n") and headers["connection"] == "close"
    why[0] = None
    assert exchange(server.port, b"GET /readyz HTTP/1.1\r\n\r\n")[::2] == (200, b"ready\n")
    assert exchange(server.port, b"HEAD /healthz HTTP/1.1\r\n\r\n")[::2] == (200, b"")
    unchecked = serve()  # no check: ready whenever it serves
    assert exchange(unchecked.port, b"GET /readyz HTTP/1.1\r\n\r\n")[0] == 200


def test_metrics_are_rendered_at_request_time(serve, registry: CollectorRegistry) -> None:
    server = serve()
    gauge = Gauge("clusterlink_test_late", "Registered after start", registry=registry)
    gauge.set(42)
    assert b"clusterlink_test_late 42.0" in exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")[2]


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /other HTTP/1.1\r\n\r\n", 404),
    (b"GET /favicon.ico HTTP/1.1\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"DELETE / HTTP/1.1\r\n\r\n", 405),
])
def test_other_well_formed_requests(serve, caplog: pytest.LogCaptureFixture, raw: bytes, status: int) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server = serve()
    got, headers, body = exchange(server.port, raw)
    assert got == status and body.startswith(f"{status} ".encode()) and len(body) < 100
    if status == 405:
        assert headers["allow"] == "GET, HEAD"
    assert server.stats.rejected == 1
    assert warnings_of(caplog) == []  # a browser's /favicon.ico is not an attack


# --- hostile and broken clients --------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "status"), [
    (bytes.fromhex("160301020001000001fc0303") + bytes(range(256)), 400),  # a TLS ClientHello
    (b"\x00\xff\xfe garbage \r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\nHost: x\n\n", 400),  # bare LF
    (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
    (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET http://x/metrics HTTP/1.1\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\n folded\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 413),
    (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 413),
    (b"GET /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
])
def test_garbage_gets_an_error_and_one_clean_line(serve, caplog: pytest.LogCaptureFixture, registry,
                                                  raw: bytes, status: int) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server = serve(head_timeout=WAIT * 2)
    started = time.monotonic()
    got, _, body = exchange(server.port, raw)
    assert got == status and len(body) < 100
    assert time.monotonic() - started < WAIT  # refused at once, not at the timeout
    record = assert_one_clean_line(caplog)
    assert f"answered {status} to 127.0.0.1:" in record.getMessage()
    assert exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")[2] == generate_latest(registry)


def test_huge_head_gets_431(serve, caplog: pytest.LogCaptureFixture, registry) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server = serve()
    status, _, _ = exchange(server.port, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert status == 431
    assert "over 8192 bytes" in assert_one_clean_line(caplog).getMessage()
    assert exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")[2] == generate_latest(registry)


def test_slowloris_is_cut_off_at_the_deadline(serve, caplog: pytest.LogCaptureFixture, clients) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server = serve(head_timeout=0.5)
    sock = connect(server.port, clients)
    started = time.monotonic()
    sock.sendall(b"GET /metrics HTTP/1.1\r\n")
    closed = False
    while not closed and time.monotonic() - started < WAIT:  # a header line every 0.1 s, never the end
        time.sleep(0.1)
        try:
            sock.sendall(b"X-Slow: 1\r\n")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        closed = closed or bool(select.select([sock], [], [], 0)[0])  # a 408 or the close
    elapsed = time.monotonic() - started
    assert closed and 0.4 < elapsed < 2.0, elapsed  # counted from the accept, not from the last byte
    assert server.stats.timed_out == 1
    assert "no complete request within 0.5 s" in assert_one_clean_line(caplog).getMessage()


def test_idle_connections_cost_no_threads_and_are_closed(serve, caplog: pytest.LogCaptureFixture, clients) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server = serve(head_timeout=0.5)
    threads = threading.active_count()
    started = time.monotonic()
    for _ in range(60):
        connect(server.port, clients)
    wait_until(lambda: server.open_connections == 60 or server.stats.timed_out > 0)
    assert threading.active_count() == threads
    for sock in clients:
        data = read_until_close(sock)
        assert data == b"" or data.startswith(b"HTTP/1.1 408 ")
    assert 0.4 < time.monotonic() - started < WAIT
    assert server.stats.timed_out == 60 and server.open_connections == 0
    assert_one_clean_line(caplog)  # 60 timeouts, one line: the rest are held back by the budget


def test_a_scraper_is_served_while_60_connections_idle(serve, registry, clients) -> None:
    server = serve()  # the default 10 s timeout: the idle ones stay open during the test
    for _ in range(60):
        connect(server.port, clients)
    wait_until(lambda: server.open_connections == 60)
    started = time.monotonic()
    assert exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")[2] == generate_latest(registry)
    assert time.monotonic() - started < 1.0
    wait_until(lambda: server.open_connections == 60)  # the scraper's is gone, the idle ones are all still open
    assert server.stats.timed_out == 0


def test_connections_over_the_cap_are_closed_at_once(serve, caplog: pytest.LogCaptureFixture, registry,
                                                     clients) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    server = serve(max_connections=4)
    for _ in range(4):
        connect(server.port, clients)
    wait_until(lambda: server.open_connections == 4)
    extra = connect(server.port, clients)
    started = time.monotonic()
    assert read_until_close(extra) == b""
    assert time.monotonic() - started < 1.0
    assert server.stats.refused == 1 and server.open_connections == 4
    assert "4 connections are open, the limit" in assert_one_clean_line(caplog).getMessage()
    clients.pop(0).close()
    wait_until(lambda: server.open_connections == 3)
    assert exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")[2] == generate_latest(registry)


def test_a_peer_that_vanishes_mid_request_costs_nothing_else(serve, registry) -> None:
    server = serve()
    for _ in range(5):
        sock = connect(server.port)
        sock.sendall(b"GET /metr")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
        sock.close()
    wait_until(lambda: server.open_connections == 0)
    assert exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")[2] == generate_latest(registry)


def test_a_failing_collector_is_a_500_with_its_traceback(serve, registry, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def collect(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("collector bug")

    registry.register(Broken())
    server = serve()
    assert exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")[0] == 500
    wait_until(lambda: server.stats.failed == 1)
    assert any(r.exc_info is not None for r in caplog.records if r.name == LOGGER)  # our bug: loud
    assert exchange(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")[0] == 500


# --- life cycle ------------------------------------------------------------------------------------

def test_stop_releases_the_thread_and_every_socket(registry, clients) -> None:
    threads = threading.active_count()
    server = ms.MetricsServer(registry, "127.0.0.1", 0)
    with pytest.raises(RuntimeError):
        server.port
    server.start()
    assert threading.active_count() == threads + 1
    idle = connect(server.port, clients)
    wait_until(lambda: server.open_connections == 1)
    server.stop()
    assert threading.active_count() == threads
    assert read_until_close(idle, 1.0) == b""
    with pytest.raises(ConnectionRefusedError):
        connect(server.port, clients)
    server.stop()  # twice is fine


def test_a_taken_port_is_an_oserror(serve, registry) -> None:
    server = serve()
    with pytest.raises(OSError):
        ms.start_metrics_server(registry, "127.0.0.1", server.port)


def test_bad_settings_are_refused(registry) -> None:
    for options in ({"head_timeout": 0}, {"max_connections": 0}, {"max_head_bytes": 10}, {"port": 70000}):
        with pytest.raises(ValueError):
            ms.MetricsServer(registry, "127.0.0.1", **options)  # type: ignore[arg-type]


# --- the protocol functions ------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "expected"), [
    (b"G", None),
    (b"GET /metr", None),
    (b"GET /metrics HTTP/1.1\r\n", None),
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r", None),
    (b"GET /metrics HTTP/1.1\r\n\r\n", 25),
    (b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", 18),  # a pipelined second request is not read
])
def test_check_head_measures(data: bytes, expected: int | None) -> None:
    assert ms.check_head(data, 8192) == expected


@pytest.mark.parametrize(("data", "status"), [
    (b"\x16\x03", 400),
    (b" GET", 400),
    (b"AVERYVERYLONGMETHODNAME", 400),
    (b"GET / HTTP/1.1\n", 400),
    (b"GET / HTTP/3.0\r\n", 505),
    (b"GET / HTTP/1.1\r\n" + b"x" * 100, 431),
    (b"GET / HTTP/1.1\r\n" + b"x: y\r\n" * 20 + b"\r\n", 431),
])
def test_check_head_refuses_early(data: bytes, status: int) -> None:
    with pytest.raises(ms.RequestError) as caught:
        ms.check_head(data, 64)
    assert caught.value.status == status


def test_parse_head() -> None:
    request = ms.parse_head(b"GET /metrics?a=1 HTTP/1.1\r\nHost: x\r\nAccept:  text/plain \r\n\r\n")
    assert request == ms.Request("GET", "/metrics", "HTTP/1.1", (("host", "x"), ("accept", "text/plain")))


def test_route() -> None:
    def render() -> bytes:
        return b"m 1\n"

    assert ms.route(ms.Request("GET", "/", "HTTP/1.1", ()), render) == ms.Response(200, CONTENT_TYPE_LATEST, b"m 1\n")
    assert ms.route(ms.Request("PUT", "/", "HTTP/1.1", ()), render).status == 405
    assert ms.route(ms.Request("GET", "/x", "HTTP/1.1", ()), render).status == 404


def test_log_budget() -> None:
    budget = ms.LogBudget(10.0)
    assert budget.take(100.0) == 0
    assert budget.take(101.0) is None and budget.take(109.9) is None
    assert budget.take(110.0) == 2
    assert budget.take(125.0) == 0


@given(st.binary(max_size=300))
def test_the_parser_only_ever_raises_request_error(data: bytes) -> None:
    try:
        end = ms.check_head(data, 256)
        if end is not None:
            request = ms.parse_head(data[:end])
            assert request.path.startswith("/")
    except ms.RequestError as exc:
        assert exc.status in (400, 413, 431, 505)


@given(st.sampled_from(["GET", "HEAD", "POST"]), st.sampled_from(["/", "/metrics", "/x"]),
       st.lists(st.tuples(st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}", fullmatch=True),
                          st.from_regex(r"[ -~]{0,20}", fullmatch=True)), max_size=5))
def test_well_formed_heads_parse(method: str, path: str, headers: list[tuple[str, str]]) -> None:
    headers = [(n, v) for n, v in headers if n.lower() not in ("content-length", "transfer-encoding")]
    raw = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    data = raw.encode()
    assert ms.check_head(data, 8192) == len(data)
    request = ms.parse_head(data)
    assert (request.method, request.path) == (method, path)
    assert [n for n, _ in request.headers] == [n.lower() for n, _ in headers]
