"""The Prometheus /metrics listener of the agent, the control plane and the gateway supervisor.

It replaces prometheus_client's `start_http_server`, which gives every connection a thread that
waits for its request without a limit (50 idle connections were 50 threads for as long as they
stayed open) and prints a traceback to stderr for every malformed request. Here:

- One daemon thread serves every connection with `selectors`: idle connections cost a file
  descriptor and a few hundred bytes each, never a thread.
- `GET /metrics` and `GET /` (prometheus_client answered any path) get
  `generate_latest(registry)` as `CONTENT_TYPE_LATEST`, rendered at request time; HEAD gets the
  same headers without the body. `GET /healthz` answers 200 `ok` while the process serves (the
  probes' liveness); `GET /readyz` 200 `ready` when the component's `ready()` callback returns None,
  else 503 with the reason it returned (a component without a callback is ready when it serves). Another well-formed request gets 404 (unknown path) or 405 (another
  method, with `Allow: GET, HEAD`); a request with a body (Content-Length > 0, Transfer-Encoding)
  413; a malformed one 400 (431 for a head over `max_head_bytes`, default 8 KiB; 505 for an HTTP
  version other than 1.0/1.1). Bytes that cannot start a request (a TLS ClientHello, random data)
  are refused as soon as they arrive, not after the timeout. Every response ends the connection
  (`Connection: close`); no keep-alive, no gzip, no OpenMetrics negotiation.
- A connection has `head_timeout` (default 10 s, counted from the accept, not from the last byte:
  a slowloris gains nothing by trickling) to send its complete request head, then as long again to
  read the response; it then gets 408 (best effort) or is closed.
- At most `max_connections` (default 64) are open at once; a connection over the cap is closed as
  soon as it is accepted, and counted.
- A misbehaving peer (malformed request, timeout, over the cap) costs one warning line of this
  module's logger, without a traceback, and at most one line per `log_interval` (default 10 s) for
  all of them together; the next line says how many were held back. Counts are in `stats`. Only a
  bug of ours (a collector that raises: 500) is logged with its traceback. No error of one
  connection ends the listener.

    server = start_metrics_server(registry, host, port)   bind (port 0: any), start the thread
    server.port                                          the bound port
    server.stats                                         served / rejected / timed_out / refused / failed
    server.stop()                                        stop the thread, close every socket (also close())

The protocol part (`check_head`, `parse_head`, `route`, `encode_response`, `LogBudget`) is plain
functions on bytes, without sockets; `MetricsServer` is the I/O around it. Import this module after
PROMETHEUS_MULTIPROC_DIR is set (the gateway supervisor imports it late for that reason).
"""

from __future__ import annotations

import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)

METRICS_PATHS = frozenset({"/", "/metrics"})
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
ReadyCheck = Callable[[], "str | None"]  # None: ready; else why not
ALLOWED_METHODS = ("GET", "HEAD")
DEFAULT_HEAD_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_MAX_HEAD_BYTES = 8192
DEFAULT_LOG_INTERVAL = 10.0

_MAX_METHOD = 16  # longer than any registered method: refuse before the line is complete
_LINGER = 1.0  # after the response: seconds to wait for the client's close, reading and discarding
_LINGER_BYTES = 65536
_ACCEPT_PAUSE = 0.5  # after accept() failed (out of file descriptors): seconds before trying again
_SAMPLE = 32  # bytes of a bad request quoted in the log line

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VERSION = re.compile(rb"HTTP/(\d)\.(\d)")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable", 505: "HTTP Version Not Supported"}


# --- protocol: bytes in, decisions out -------------------------------------------------------------

class RequestError(Exception):
    """The peer sent bytes this server does not accept: answer `status` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # the target without its query
    version: str
    headers: tuple[tuple[str, str], ...]  # names in lower case, in order


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    allow: str | None = None


def check_head(data: bytes, limit: int) -> int | None:
    """The length of the request head at the start of `data` (through its empty line), or None
    while it is incomplete.

    Raises RequestError when the head is longer than `limit` bytes (431), and as soon as the bytes
    so far cannot begin a request line this server accepts (400, 505)."""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        if end + 4 > limit:
            raise RequestError(431, f"request head over {limit} bytes")
        return end + 4
    if len(data) >= limit:
        raise RequestError(431, f"request head over {limit} bytes")
    newline = data.find(b"\n")
    if newline >= 0:
        parse_request_line(data[:newline + 1])
        return None
    method, space, _ = data.partition(b" ")
    if not all(c in _TCHAR for c in method) or (space and not method) or len(method) > _MAX_METHOD:
        raise RequestError(400, "malformed request line")
    return None


def parse_request_line(line: bytes) -> tuple[str, str, str]:
    """`line` is the first line with its line end: method, target, version, or RequestError."""
    if not line.endswith(b"\r\n"):
        raise RequestError(400, "lines must end with CRLF")
    parts = line[:-2].split(b" ")
    if len(parts) != 3:
        raise RequestError(400, "malformed request line")
    method, target, version = parts
    if not method or len(method) > _MAX_METHOD or not all(c in _TCHAR for c in method):
        raise RequestError(400, "malformed request method")
    if not target or not all(0x21 <= c <= 0x7E for c in target):
        raise RequestError(400, "malformed request target")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise RequestError(400, "malformed HTTP version")
    if match.group(1) != b"1" or match.group(2) not in (b"0", b"1"):
        raise RequestError(505, "only HTTP/1.0 and HTTP/1.1 are served")
    if not target.startswith(b"/"):
        raise RequestError(400, "the request target must be a path")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def parse_head(head: bytes) -> Request:
    """A complete request head (as measured by `check_head`) as a Request, or RequestError."""
    if not head.endswith(b"\r\n\r\n"):
        raise RequestError(400, "incomplete request head")
    lines = head[:-4].split(b"\r\n")
    method, target, version = parse_request_line(lines[0] + b"\r\n")
    headers = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise RequestError(400, "folded header lines are not accepted")
        name, colon, value = line.partition(b":")
        if not colon or not name or not all(c in _TCHAR for c in name):
            raise RequestError(400, "malformed header line")
        value = value.strip(b" \t")
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
            raise RequestError(400, "control character in a header value")
        headers.append((name.decode("ascii").lower(), value.decode("latin-1")))
    for name, value in headers:
        if name == "transfer-encoding":
            raise RequestError(413, "request bodies are not accepted")
        if name == "content-length":
            if not value.isdigit() or not value.isascii():
                raise RequestError(400, "malformed Content-Length")
            if int(value) > 0:
                raise RequestError(413, "request bodies are not accepted")
    return Request(method=method, path=target.partition("?")[0], version=version, headers=tuple(headers))


def route(request: Request, render: Callable[[], bytes], ready: ReadyCheck | None = None) -> Response:
    """What this server answers to a well-formed request; `render` makes the metrics text, `ready`
    says why the component is not ready (None: it is)."""
    if request.method not in ALLOWED_METHODS:
        return error_response(405, "only GET and HEAD are served", allow=", ".join(ALLOWED_METHODS))
    if request.path == HEALTH_PATH:
        return Response(200, "text/plain; charset=utf-8", b"ok\n")
    if request.path == READY_PATH:
        why = ready() if ready is not None else None
        if why is None:
            return Response(200, "text/plain; charset=utf-8", b"ready\n")
        return Response(503, "text/plain; charset=utf-8", f"not ready: {why}\n".encode())
    if request.path not in METRICS_PATHS:
        return error_response(404, "metrics are served at /metrics (probes: /healthz, /readyz)")
    return Response(200, CONTENT_TYPE_LATEST, render())


def error_response(status: int, reason: str, *, allow: str | None = None) -> Response:
    body = f"{status} {_REASONS[status]}: {reason}\n".encode()
    return Response(status, "text/plain; charset=utf-8", body, allow)


def encode_response(response: Response, *, head_only: bool = False) -> bytes:
    """The bytes of `response` (without its body for HEAD), always ending the connection."""
    lines = [f"HTTP/1.1 {response.status} {_REASONS[response.status]}",
             f"Date: {formatdate(usegmt=True)}",
             f"Content-Type: {response.content_type}",
             f"Content-Length: {len(response.body)}",
             "Connection: close"]
    if response.allow is not None:
        lines.append(f"Allow: {response.allow}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


class LogBudget:
    """At most one log line per `interval` seconds; counts the lines it held back for the next one."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.held = 0
        self._next = float("-inf")

    def take(self, now: float) -> int | None:
        """None: stay silent. Otherwise log, mentioning the returned number of lines held back."""
        if now < self._next:
            self.held += 1
            return None
        held, self.held = self.held, 0
        self._next = now + self.interval
        return held


# --- the listener ----------------------------------------------------------------------------------

@dataclass
class MetricsServerStats:
    served: int = 0  # 200 responses
    rejected: int = 0  # requests answered 4xx
    timed_out: int = 0  # connections closed at their deadline
    refused: int = 0  # connections closed at once: over max_connections
    failed: int = 0  # our errors: 500 responses, unexpected exceptions


_HEAD, _WRITE, _DRAIN = "head", "write", "drain"


class _Connection:
    __slots__ = ("sock", "peer", "buffer", "deadline", "phase", "out", "drained")

    def __init__(self, sock: socket.socket, peer: str, deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = b""
        self.deadline = deadline
        self.phase = _HEAD
        self.out = memoryview(b"")
        self.drained = 0


class MetricsServer:
    """Serves `registry` on host:port from one background thread (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry, host: str = "0.0.0.0", port: int = 0, *,
                 head_timeout: float = DEFAULT_HEAD_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES, log_interval: float = DEFAULT_LOG_INTERVAL,
                 ready: ReadyCheck | None = None) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"metrics port {port} is out of range")
        if head_timeout <= 0 or max_connections < 1 or max_head_bytes < 64 or log_interval < 0:
            raise ValueError("head_timeout must be > 0, max_connections >= 1, max_head_bytes >= 64, "
                             "log_interval >= 0")
        self.registry = registry
        self.ready = ready  # called from the server's thread: it must only read
        self.host = host
        self.head_timeout = head_timeout
        self.max_connections = max_connections
        self.max_head_bytes = max_head_bytes
        self.stats = MetricsServerStats()
        self._requested_port = port
        self._port: int | None = None
        self._budget = LogBudget(log_interval)
        self._conns: dict[socket.socket, _Connection] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._accept_paused_until: float | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the metrics server was not started")
        return self._port

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def __repr__(self) -> str:
        return f"<MetricsServer {self._where}>"

    @property
    def _where(self) -> str:
        port = self._port if self._port is not None else self._requested_port
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"

    def start(self) -> MetricsServer:
        """Bind and listen (OSError if the address is taken), then serve from a daemon thread."""
        if self._thread is not None:
            raise RuntimeError(f"{self!r} is already running")
        family, kind, proto, _, address = socket.getaddrinfo(self.host or None, self._requested_port,
                                                             type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        listener = socket.socket(family, kind, proto)
        opened = [listener]
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(128)
            listener.setblocking(False)
            wake_r, wake_w = socket.socketpair()
            opened += [wake_r, wake_w]
            wake_r.setblocking(False)
            wake_w.setblocking(False)
            selector = selectors.DefaultSelector()
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake_r, selectors.EVENT_READ)
        except BaseException:
            for sock in opened:
                sock.close()
            raise
        self._listener, self._wake_r, self._wake_w, self._selector = listener, wake_r, wake_w, selector
        self._port = listener.getsockname()[1]
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name=f"metrics-server-{self._port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread; when this returns, the listener and every connection are closed."""
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        try:
            assert self._wake_w is not None
            self._wake_w.send(b"\0")
        except OSError:  # the thread has already closed it (it ended by itself), or the pipe is full
            pass
        thread.join()
        self._thread = None

    close = stop

    def __enter__(self) -> MetricsServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the thread ---

    def _serve(self) -> None:
        selector = self._selector
        assert selector is not None
        try:
            while not self._stopping.is_set():
                for key, mask in selector.select(self._select_timeout(time.monotonic())):
                    now = time.monotonic()
                    if key.fileobj is self._listener:
                        self._accept(now)
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    elif key.data.sock in self._conns:  # not closed by an earlier event of this round
                        self._ready(key.data, now)
                now = time.monotonic()
                self._expire(now)
                if self._accept_paused_until is not None and now >= self._accept_paused_until:
                    self._accept_paused_until = None
                    selector.register(self._listener, selectors.EVENT_READ)
        except Exception:  # a bug of ours in the loop itself: the listener is gone, say so loudly
            self.stats.failed += 1
            log.exception("The metrics server on %s stopped after an unexpected error", self._where)
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            selector.close()
            for sock in (self._listener, self._wake_r, self._wake_w):
                if sock is not None:
                    sock.close()

    def _select_timeout(self, now: float) -> float | None:
        deadlines = [conn.deadline for conn in self._conns.values()]
        if self._accept_paused_until is not None:
            deadlines.append(self._accept_paused_until)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        try:
            self._wake_r.recv(64)
        except (BlockingIOError, InterruptedError):
            pass

    def _accept(self, now: float) -> None:
        assert self._listener is not None and self._selector is not None
        for _ in range(self.max_connections):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: the listener stays readable; pause, or spin
                self._complain(now, f"cannot accept connections ({exc.strerror or exc}); pausing for "
                                    f"{_ACCEPT_PAUSE} s")
                self._selector.unregister(self._listener)
                self._accept_paused_until = now + _ACCEPT_PAUSE
                return
            peer = _format_peer(address)
            if len(self._conns) >= self.max_connections:
                self.stats.refused += 1
                self._complain(now, f"closed the connection from {peer} at once: {self.max_connections} "
                                    f"connections are open, the limit")
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Connection(sock, peer, now + self.head_timeout)
            self._conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _ready(self, conn: _Connection, now: float) -> None:
        """One event of one connection; nothing that happens here ends the listener."""
        try:
            if conn.phase == _HEAD:
                self._read_head(conn, now)
            elif conn.phase == _WRITE:
                self._write(conn, now)
            else:
                self._drain(conn)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset, broken pipe: the peer is gone; nothing to report
            self._close(conn)
        except Exception:
            self.stats.failed += 1
            log.exception("The metrics server on %s dropped the connection from %s after an unexpected error",
                          self._where, conn.peer)
            self._close(conn)

    def _read_head(self, conn: _Connection, now: float) -> None:
        chunk = conn.sock.recv(4096)
        if not chunk:
            if conn.buffer:
                self.stats.rejected += 1
                self._complain(now, f"got an incomplete request from {conn.peer} ({len(conn.buffer)} bytes, "
                                    f"starting {conn.buffer[:_SAMPLE]!r}), then the connection closed")
            self._close(conn)
            return
        conn.buffer += chunk
        try:
            end = check_head(conn.buffer, self.max_head_bytes)
            if end is None:
                return
            request = parse_head(conn.buffer[:end])
        except RequestError as exc:
            self.stats.rejected += 1
            self._complain(now, f"answered {exc.status} to {conn.peer} ({exc.reason}; the request starts "
                                f"{conn.buffer[:_SAMPLE]!r})")
            self._respond(conn, encode_response(error_response(exc.status, exc.reason)), now)
            return
        response = self._answer(request)
        if response.status == 200:
            self.stats.served += 1
        elif response.status < 500:
            self.stats.rejected += 1
            log.debug("The metrics server on %s answered %d to %s %s from %s", self._where, response.status,
                      request.method, request.path, conn.peer)
        self._respond(conn, encode_response(response, head_only=request.method == "HEAD"), now)

    def _answer(self, request: Request) -> Response:
        try:
            return route(request, lambda: generate_latest(self.registry), self.ready)
        except Exception:  # a collector that raises: our bug, with its traceback
            self.stats.failed += 1
            log.exception("The metrics server on %s could not collect the metrics", self._where)
            return error_response(500, "the metrics could not be collected")

    def _respond(self, conn: _Connection, data: bytes, now: float) -> None:
        assert self._selector is not None
        conn.phase = _WRITE
        conn.out = memoryview(data)
        conn.deadline = now + self.head_timeout
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn, now)

    def _write(self, conn: _Connection, now: float) -> None:
        assert self._selector is not None
        sent = conn.sock.send(conn.out)
        conn.out = conn.out[sent:]
        if conn.out:
            return
        # Done: half-close, then read (and drop) until the client closes, so that the kernel does not
        # answer bytes still on their way (a pipelined request, the rest of a huge head) with a reset that
        # could destroy the response before the client has read it.
        conn.sock.shutdown(socket.SHUT_WR)
        conn.phase = _DRAIN
        conn.deadline = min(conn.deadline, now + _LINGER)
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _drain(self, conn: _Connection) -> None:
        chunk = conn.sock.recv(4096)
        conn.drained += len(chunk)
        if not chunk or conn.drained > _LINGER_BYTES:
            self._close(conn)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._conns.values() if now >= c.deadline]:
            if conn.phase == _HEAD:
                self.stats.timed_out += 1
                self._complain(now, f"closed the connection from {conn.peer}: no complete request within "
                                    f"{self.head_timeout:g} s ({len(conn.buffer)} bytes received)")
                try:  # best effort: one non-blocking send, whatever fits
                    conn.sock.send(encode_response(error_response(408, "no complete request in time")))
                except OSError:
                    pass
            elif conn.phase == _WRITE:
                self.stats.timed_out += 1
                self._complain(now, f"closed the connection from {conn.peer}: the response was not read "
                                    f"within {self.head_timeout:g} s")
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        self._conns.pop(conn.sock, None)
        if self._selector is not None:
            try:
                self._selector.unregister(conn.sock)
            except (KeyError, ValueError):
                pass
        conn.sock.close()

    def _complain(self, now: float, what: str) -> None:
        """One warning line about a misbehaving peer, within the log budget."""
        held = self._budget.take(now)
        if held is None:
            return
        more = f" ({held} similar lines held back)" if held else ""
        log.warning("The metrics server on %s %s%s", self._where, what, more)


def start_metrics_server(registry: CollectorRegistry, host: str = "0.0.0.0", port: int = 0, *,
                         head_timeout: float = DEFAULT_HEAD_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                         max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
                         log_interval: float = DEFAULT_LOG_INTERVAL, ready: ReadyCheck | None = None) -> MetricsServer:
    """Serve `registry` on host:port (port 0: any free one, see `.port`) until `.stop()`; OSError if the
    address cannot be bound."""
    return MetricsServer(registry, host, port, head_timeout=head_timeout, max_connections=max_connections,
                         max_head_bytes=max_head_bytes, log_interval=log_interval, ready=ready).start()


def _format_peer(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
