"""The asyncio client of the peer protocol: health probes, and keep-alive connections to a remote
peer's gateway that carry `GET /healthz` and `POST /authz` and end with a `CONNECT`.

`probe_healthz` is what heartbeats use: every gateway of the peer is tried at once, the first
that answers 200 wins, and its `ClusterLinkPeerLabels` are returned. `PeerConnection` is what
the gateway's tunnel pool holds: one mTLS connection (the server's certificate must carry the
peer's name: SNI and hostname check use it), one request at a time; `send_connect()` writes the
CONNECT without waiting, so that application bytes can follow at once, and `connect_response()`
reads the answer; after a 2xx, `stream` carries raw bytes (those the server already sent are in
`trailing_data`).

Errors: `PeerUnreachable` (no TCP connection or TLS handshake with any gateway tried) and
`ExchangeFailed` (an established connection broke, timed out or answered something that is not
HTTP). Both are `PeerError`; an HTTP error status is not an exception (the caller decides).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from . import framing
from .codec import LABELS_HEADER, AuthzRequest, WireError, decode_labels
from .exchange import ClientConnection, Response, ResponseError
from .server import NEED_DATA
from .stream import StreamError
from .tlsstream import TlsStream

T = TypeVar("T")
Gateway = tuple[str, int]


class PeerError(Exception):
    """A remote peer could not be talked to (see the subclasses)."""


class PeerUnreachable(PeerError):
    """No connection (TCP or TLS) could be made to any of the gateways tried."""


class ExchangeFailed(PeerError):
    """An established connection broke, timed out, or answered with something that is not HTTP."""


@dataclass(frozen=True)
class HealthzResult:
    labels: dict[str, str]
    gateway: Gateway


def describe(gateway: Gateway) -> str:
    host, port = gateway
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PeerConnection:
    """One keep-alive HTTP/1.1 connection over mTLS to a gateway of peer `peer_name`."""

    def __init__(self, stream: TlsStream, peer_name: str, gateway: Gateway) -> None:
        self.stream = stream
        self.peer_name = peer_name
        self.gateway = gateway
        self._http = ClientConnection(peer_name)
        self._busy = False
        self.framing = False  # the server said it supports framed tunnels
        self.created_at = time.monotonic()
        self.last_used = self.created_at

    @classmethod
    async def open(cls, gateway: Gateway, *, peer_name: str, context: ssl.SSLContext,
                   timeout: float = 3.0, liveness_timeout: float | None = None) -> PeerConnection:
        """Connect and complete the TLS handshake within `timeout`; raises PeerUnreachable."""
        loop = asyncio.get_running_loop()
        host, port = gateway
        stream: TlsStream | None = None

        def factory() -> TlsStream:
            nonlocal stream
            stream = TlsStream(context, server_side=False, server_hostname=peer_name, handshake_timeout=timeout,
                               liveness_timeout=liveness_timeout)
            return stream

        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(factory, host, port)
                assert stream is not None
                await stream.handshake()
        except TimeoutError:
            raise PeerUnreachable(f"gateway {describe(gateway)} of peer {peer_name!r}: "
                                  f"no connection within {timeout:g} s") from None
        except StreamError as exc:
            raise PeerUnreachable(f"gateway {describe(gateway)} of peer {peer_name!r}: {exc}") from None
        except OSError as exc:
            raise PeerUnreachable(f"gateway {describe(gateway)} of peer {peer_name!r}: "
                                  f"{exc.strerror or exc}") from None
        finally:
            if stream is not None and not stream.handshaked:
                stream.abort()
        assert stream is not None
        return cls(stream, peer_name, gateway)

    # --- state -------------------------------------------------------------------------------

    @property
    def resumed(self) -> bool:
        """Whether the TLS handshake resumed a previous session."""
        return self.stream.session_reused

    @property
    def usable(self) -> bool:
        """Alive, idle, and able to carry another request."""
        return not self._busy and self.stream.alive and not self.stream.buffered and self._http.reusable

    @property
    def trailing_data(self) -> bytes:
        return self._http.trailing_data

    def close(self) -> None:
        self.stream.close()

    def abort(self) -> None:
        self.stream.abort()

    # --- exchanges ---------------------------------------------------------------------------

    async def _exchange(self, request: bytes, timeout: float) -> Response:
        if self._busy:
            raise RuntimeError("PeerConnection: one request at a time")
        self._busy = True
        try:
            self.stream.write(request)
            return await self._response(timeout)
        finally:
            self._busy = False
            self.last_used = time.monotonic()

    async def _response(self, timeout: float) -> Response:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    response = self._http.next_response()
                    if response is not NEED_DATA:
                        assert isinstance(response, Response)
                        if response.framing:
                            self.framing = True
                        return response
                    self._http.receive_data(await self.stream.read())
        except TimeoutError:
            self.stream.abort()
            raise ExchangeFailed(f"gateway {describe(self.gateway)} of peer {self.peer_name!r} did not answer "
                                 f"within {timeout:g} s") from None
        except StreamError as exc:
            self.stream.abort()
            raise ExchangeFailed(f"connection to gateway {describe(self.gateway)} of peer {self.peer_name!r} "
                                 f"failed: {exc}") from None
        except ResponseError as exc:
            self.stream.abort()
            raise ExchangeFailed(f"gateway {describe(self.gateway)} of peer {self.peer_name!r}: {exc}") from None

    async def healthz(self, timeout: float = 3.0) -> dict[str, str]:
        """`GET /healthz`: the peer's labels; raises ExchangeFailed unless it answers 200."""
        response = await self._exchange(self._http.healthz(), timeout)
        if response.status != 200:
            raise ExchangeFailed(f"gateway {describe(self.gateway)} of peer {self.peer_name!r} answered "
                                 f"/healthz with {response.summary()}")
        try:
            return decode_labels(response.header(LABELS_HEADER))
        except WireError as exc:
            raise ExchangeFailed(f"gateway {describe(self.gateway)} of peer {self.peer_name!r}: {exc}") from None

    async def authz(self, request: AuthzRequest, timeout: float = 3.0) -> Response:
        """`POST /authz`: the response, whatever its status (200 carries `x-access-token`)."""
        return await self._exchange(self._http.authz(request), timeout)

    def send_connect(self, token: str, early_data: bytes = b"", *, framed: bool = False, udp: bool = False) -> bytes:
        """Write the CONNECT request followed by `early_data` (as one frame when `framed`);
        `udp`: the tunnel carries a UDP flow (datagram capsules). Returns the request bytes written."""
        if self._busy:
            raise RuntimeError("PeerConnection: one request at a time")
        self._busy = True
        request = self._http.connect(token, framed=framed, udp=udp)
        if early_data:
            self.stream.write(request + (framing.frame(early_data) if framed else early_data))
        else:
            self.stream.write(request)
        return request

    def recycle(self) -> None:
        """A framed tunnel on this connection ended cleanly: ready for the next request (and idle
        until then: large read buffers of a bulk transfer are let go)."""
        self.stream.shrink_read_buffers()
        self._http = ClientConnection(self.peer_name)
        self._busy = False
        self.last_used = time.monotonic()

    async def connect_response(self, timeout: float) -> Response:
        """The answer to the CONNECT; after a 2xx the stream carries raw bytes."""
        try:
            return await self._response(timeout)
        finally:
            self.last_used = time.monotonic()

    def remember_session(self, context: ssl.SSLContext) -> bool:
        """Let a resuming client context cache this connection's TLS session (after a read)."""
        remember = getattr(context, "remember_session", None)
        ssl_object = self.stream.ssl_object
        if remember is None or ssl_object is None:
            return False
        return bool(remember(self.peer_name, ssl_object))


async def first_success(attempts: Sequence[Callable[[], Awaitable[T]]], *, name: str,
                        on_extra: Callable[[T], None] | None = None) -> tuple[T, list[PeerError]]:
    """Run every attempt at once; the first to succeed wins, the others are cancelled.

    Returns the winner's result and the errors of the attempts that failed before it; raises one
    PeerUnreachable joining all errors when every attempt fails. `on_extra` receives the results
    of attempts that also succeeded before they could be cancelled (e.g. to close a connection).
    Exceptions other than PeerError are not expected and propagate.
    """
    tasks = [asyncio.create_task(attempt(), name=f"{name}-{i}") for i, attempt in enumerate(attempts)]
    errors: list[PeerError] = []
    winner: asyncio.Task[T] | None = None
    handled: set[asyncio.Task[T]] = set()
    try:
        pending: set[asyncio.Task[T]] = set(tasks)
        while pending and winner is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task not in done:
                    continue
                handled.add(task)
                exc = task.exception()
                if exc is None:
                    if winner is None:
                        winner = task
                    elif on_extra is not None:
                        on_extra(task.result())
                elif isinstance(exc, PeerError):
                    errors.append(exc)
                else:
                    raise exc
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results):
            if task not in handled and on_extra is not None and not isinstance(result, BaseException):
                on_extra(result)
    if winner is None:
        raise PeerUnreachable("; ".join(str(e) for e in errors) or f"{name}: nothing to try")
    return winner.result(), errors


async def probe_healthz(gateways: Sequence[Gateway], *, peer_name: str,
                        context_factory: Callable[[], ssl.SSLContext], timeout: float = 3.0) -> HealthzResult:
    """`GET /healthz` on every gateway of `peer_name` at once; the first 200 wins.

    The server's certificate must carry `peer_name` (SNI and hostname check). Raises
    PeerUnreachable naming every gateway's failure when none answers in `timeout` seconds.
    """
    if not gateways:
        raise PeerUnreachable(f"peer {peer_name!r} has no gateways")
    deadline = time.monotonic() + timeout

    def attempt(gateway: Gateway) -> Callable[[], Awaitable[HealthzResult]]:
        async def run() -> HealthzResult:
            context = context_factory()
            conn = await PeerConnection.open(gateway, peer_name=peer_name, context=context,
                                             timeout=max(0.01, deadline - time.monotonic()))
            try:
                labels = await conn.healthz(timeout=max(0.01, deadline - time.monotonic()))
                conn.remember_session(context)
            except ExchangeFailed as exc:
                raise PeerUnreachable(str(exc)) from None
            finally:
                conn.close()
            return HealthzResult(labels=labels, gateway=gateway)
        return run

    try:
        result, _ = await first_success([attempt(g) for g in gateways], name=f"healthz-{peer_name}")
    except PeerUnreachable as exc:
        raise PeerUnreachable(f"peer {peer_name!r} is unreachable: {exc}") from None
    return result
