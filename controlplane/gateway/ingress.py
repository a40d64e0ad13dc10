"""Ingress: the peer port. Remote gateways (and heartbeats) connect with mTLS and speak HTTP/1.1:

- `GET /healthz` → 200 with our labels (`ClusterLinkPeerLabels`);
- `POST /authz` → the Export must exist and be valid (else 404); the ingress policy decides on the
  requested source attributes, with the peer name taken from the client certificate (never the
  one claimed); deny → 403 naming the policy; allow → 200 with an access token bound to that peer;
- `CONNECT` with `Authorization: Bearer <token>` → the token must be ours, unexpired, and issued
  to the peer presenting it (else 401); the policy is evaluated again, now, on the token's source
  attributes (a policy change applies to the very next connection, cached token or not; 403); the
  Export must still exist (404) and carry the tunnel's protocol (400: a CONNECT with
  `x-clusterlink-protocol: udp` is a UDP flow, any other TCP); then the exported service is
  connected (502 when refused, 503 on timeout), 200 is answered and bytes flow (those the client
  sent after its request included; for UDP, datagram capsules, see `peerwire.datagrams`).

Only peers that are configured are served: the certificate's name must be that of a Peer object
(else 403 to every request), unless --unconfigured-peers serve. Metric labels name only
configured objects (see `metrics.UNKNOWN_LABEL`).

Keep-alive between requests (pooled tunnels send `/healthz` now and then). Limits: handshake
time, time to a first request and to a complete request, idle time, header size (431), body
size (413). Misbehaviour is counted and logged at a limited rate; one connection never affects
another.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from controlplane.api.logsetup import fields
from controlplane.peerwire import codec, datagrams, framing
from controlplane.peerwire.server import CLOSED, NEED_DATA, BadRequest, Request, ServerConnection, connect_accepted
from controlplane.peerwire.stream import Stream, StreamError, TcpStream, connect_tcp
from controlplane.peerwire.tlsstream import TlsStream
from controlplane.tlsconfig import peer_name_from_peercert
from controlplane.tokens import TokenError

from .accessgrants import VerifiedGrants
from .accesslog import AccessLog
from .config import Limits
from .decisions import ingress_check
from .denials import DenialReports
from .logthrottle import LogThrottle, attributes
from .metrics import UNCONFIGURED_PEER_LABEL, UNKNOWN_LABEL, GatewayMetrics
from .relay import Relay, RelayMeter
from .state import ExportView, GatewayState

log = logging.getLogger(__name__)

DIRECTION = "ingress"
LISTENER = "peer"


_FRAMING = (framing.TUNNEL_HEADER, framing.FRAMED)  # we support framed tunnels (peerwire.framing)


LINGER_SECONDS = 1.0  # after a refusal: how long what the client still sends is read and dropped
LINGER_BYTES = 4 << 20


async def _linger_close(stream: TlsStream) -> None:
    """After an answer with `Connection: close`: end our side (TLS close_notify), then drop what
    the client is still sending (undecrypted) until it closes, for LINGER_SECONDS or LINGER_BYTES
    at most, and close. Closing with unread bytes makes the kernel reset the connection, and the
    reset can overtake the answer: a client sending a 1 MiB header saw a reset instead of its 431."""
    stream.write_eof()
    ended = await stream.discard_input(LINGER_BYTES, LINGER_SECONDS)
    if ended:
        stream.close()
    else:
        stream.abort()


class _Close(Exception):
    """End this connection (the reason was already counted and logged)."""


class Ingress:
    def __init__(self, *, state: Callable[[], GatewayState], metrics: GatewayMetrics, limits: Limits,
                 meter: RelayMeter, framing: bool = True, serve_unconfigured_peers: bool = False,
                 access: AccessLog | None = None, denials: DenialReports | None = None) -> None:
        self._state = state
        self._serve_unconfigured = serve_unconfigured_peers
        self._framing_header = (_FRAMING,) if framing else ()
        # The 200 that accepts a CONNECT, made once: raw tunnel, framed tunnel.
        self._accepted = (connect_accepted(), connect_accepted(self._framing_header))
        self._grants = VerifiedGrants()  # tokens verified before (a peer reuses each for many connections)
        self._idle: set[Stream] = set()  # keep-alive connections waiting for their next request
        self._epoch = 0  # bumped when our certificates change
        self._draining = False
        self._metrics = metrics
        self._limits = limits
        self._meter = meter
        self._throttle = LogThrottle(log, interval=10.0)
        self._access = access or AccessLog(False)
        self._denials = denials if denials is not None else DenialReports()

    def certificates_changed(self) -> int:
        """Our certificates (or the CA) changed: a connection authenticated with the old ones must
        handshake again. Those waiting for a request are closed now, the others after their current
        request or tunnel. Returns how many were closed now."""
        self._epoch += 1
        idle = list(self._idle)
        for stream in idle:
            stream.close()
        return len(idle)

    def close_idle(self) -> int:
        """Stop serving new requests (the worker drains): close the keep-alive connections that
        wait for one (pooled tunnels of other gateways, which reconnect to another worker or
        replica); the others are closed after their current request or tunnel."""
        self._draining = True
        idle = list(self._idle)
        for stream in idle:
            stream.close()
        return len(idle)

    def _bad(self, reason: str, message: str, *args: object) -> None:
        self._metrics.child(self._metrics.bad_requests, LISTENER, reason).inc()
        self._throttle.warning(f"bad:{reason}", message, *args)

    # --- connection loop ---------------------------------------------------------------------

    async def serve(self, stream: TlsStream) -> None:
        try:
            await stream.handshake()
        except StreamError as exc:
            stream.abort()
            if exc.reason == "closed":  # a TCP probe (load balancer, kubelet): routine
                self._metrics.child(self._metrics.bad_requests, LISTENER, "closed-before-handshake").inc()
                log.debug("Peer-port connection from %s closed before its TLS handshake", _peer(stream))
                return
            reason = "handshake-timeout" if exc.reason == "timeout" else "tls-handshake"
            self._bad(reason, "Peer-port connection from %s refused: %s", _peer(stream), exc)
            return
        presenting = peer_name_from_peercert(stream.peer_certificate())
        if not presenting:
            self._bad("no-san", "Peer-port connection from %s refused: its certificate has no DNS name",
                      _peer(stream))
            stream.abort()
            return
        http = ServerConnection(max_header_bytes=self._limits.max_header_bytes,
                                max_body_bytes=self._limits.max_body_bytes)
        first = True
        served = 0  # plain requests answered (CONNECTs are paced by their relay)
        epoch = self._epoch
        try:
            while True:
                if epoch != self._epoch and not http.has_pending_bytes:
                    stream.close()  # authenticated with certificates we no longer use
                    return
                request = await self._next_request(stream, http, presenting, first)
                if request is None:
                    stream.close()
                    return
                first = False
                if not self._admitted(presenting):
                    self._bad("unconfigured-peer", "Peer-port request from %s (%s) refused with 403: no Peer "
                              "of that name is configured here", presenting[:100], _peer(stream))
                    stream.write(http.respond(403, body=f"peer {presenting[:100]} is not configured on this "
                                              f"gateway (no Peer object of that name)\n".encode(), close=True))
                    await _linger_close(stream)
                    return
                if request.method == "CONNECT":
                    if not await self._connect(stream, http, request, presenting):
                        return
                    # a framed tunnel ended cleanly: the connection carries the next request
                    stream.shrink_read_buffers()
                    http = ServerConnection(max_header_bytes=self._limits.max_header_bytes,
                                            max_body_bytes=self._limits.max_body_bytes)
                    continue
                served += 1
                # While it answers requests, the connection buffers little of what its client has
                # not read, so that `_pace` notices a client that does not read (the defaults come
                # back for a tunnel, whose throughput wants large buffers).
                stream.buffer_little()
                status, headers, body = self._answer(request, presenting)
                last = served >= self._limits.max_requests
                stream.write(http.respond(status, headers=headers, body=body, close=last))
                if last or not http.keep_alive:
                    stream.close()
                    return
                await self._pace(stream, http, presenting)
        except _Close:
            stream.close()
        except StreamError as exc:
            self._metrics.child(self._metrics.bad_requests, LISTENER, exc.reason).inc()
            log.debug("Peer-port connection from %s (%s) ended: %s", presenting, _peer(stream), exc)
            stream.abort()
        except asyncio.CancelledError:
            stream.abort()
            raise

    def _admitted(self, presenting: str) -> bool:
        """Whether the peer presenting this certificate name is served: a Peer object of that name
        is configured (checked on every request, so removing the Peer applies to the next one),
        or --unconfigured-peers serve."""
        return self._serve_unconfigured or presenting in self._state().peers

    async def _pace(self, stream: Stream, http: ServerConnection, presenting: str) -> None:
        """Between two requests on one connection: a client that sends requests without reading
        the answers (more than the write high-water mark unread) waits until they are read, or is
        dropped after --request-timeout, and one
        whose next request is already buffered (pipelining) lets the other connections go first."""
        if stream.write_paused:
            try:
                async with asyncio.timeout(self._limits.request_timeout):
                    await stream.drain()
            except TimeoutError:
                self._bad("slow-reader", "Peer-port connection from %s (%s) dropped: its answers were not read "
                          "within %g s", presenting, _peer(stream), self._limits.request_timeout)
                stream.abort()
                raise _Close() from None
        elif http.has_pending_bytes or stream.buffered:
            await asyncio.sleep(0)

    async def _next_request(self, stream: Stream, http: ServerConnection, presenting: str,
                            first: bool) -> Request | None:
        """The next request; None when the client closed or stayed idle too long."""
        now = time.monotonic()
        waiting_for_first_byte = not http.has_pending_bytes
        deadline = now + (self._limits.idle_timeout if waiting_for_first_byte and not first
                          else self._limits.request_timeout)
        while True:
            try:
                request = http.next_request()
            except BadRequest as exc:
                reason = {431: "header-too-large", 413: "body-too-large"}.get(exc.status, "bad-request")
                self._bad(reason, "Peer-port request from %s (%s) refused with %d: %s", presenting, _peer(stream),
                          exc.status, exc)
                stream.write(http.respond(exc.status, body=f"{exc}\n".encode(), close=True))
                await _linger_close(stream)
                raise _Close() from None
            if request is CLOSED:
                return None
            if request is not NEED_DATA:
                assert isinstance(request, Request)
                return request
            if waiting_for_first_byte and http.has_pending_bytes:
                waiting_for_first_byte = False
                deadline = time.monotonic() + self._limits.request_timeout
            idle = waiting_for_first_byte and not first
            if idle and self._draining:
                return None
            remaining = deadline - time.monotonic()
            if idle:
                self._idle.add(stream)
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    data = await stream.read()
            except TimeoutError:
                if waiting_for_first_byte and not first:
                    return None  # an idle keep-alive connection: closing it is routine
                self._bad("timeout", "Peer-port connection from %s (%s) dropped: no complete request within %g s",
                          presenting, _peer(stream), self._limits.request_timeout)
                raise _Close() from None
            finally:
                self._idle.discard(stream)
            http.receive_data(data)

    # --- healthz and authz -------------------------------------------------------------------

    def _answer(self, request: Request, presenting: str) -> tuple[int, list[tuple[str, str]], bytes]:
        path = request.target.split("?", 1)[0]
        state = self._state()
        if path == codec.HEALTHZ_PATH:
            if request.method not in ("GET", "HEAD"):
                return 405, [("Allow", "GET")], b"use GET /healthz\n"
            labels = (codec.LABELS_HEADER, codec.encode_labels(state.peer_labels))
            return 200, [labels, *self._framing_header], b""
        if path == codec.AUTHZ_PATH:
            if request.method != "POST":
                return 405, [("Allow", "POST")], b"use POST /authz\n"
            status, headers, body = self._authz(state, request, presenting)
            return status, [*headers, *self._framing_header], body
        self._metrics.child(self._metrics.bad_requests, LISTENER, "unknown-path").inc()
        return 404, [], f"no such endpoint {path[:100]}\n".encode()

    def _authz(self, state: GatewayState, request: Request,
               presenting: str) -> tuple[int, list[tuple[str, str]], bytes]:
        started = time.monotonic()
        try:
            authz = codec.parse_authz_request(request.body)
        except codec.WireError as exc:
            self._bad("bad-authz", "Authorization request from peer %s refused with %d: %s", presenting,
                      exc.status, exc)
            return exc.status, [], f"{exc}\n".encode()
        export = _valid_export(state, authz.service_namespace, authz.service_name)
        if export is None:
            self._count(UNKNOWN_LABEL, presenting, "not-found")
            return 404, [], f"no valid export {authz.service_namespace}/{authz.service_name}\n".encode()
        check = ingress_check(state, export, authz.src_attributes, presenting)
        self._count_decision(check.decision)
        if not check.decision.allowed:
            # A refused token request is a refused connection (the peer asks for a token per
            # connection when it has none cached): it gets its access-log line here.
            conn = self._access.new_id()
            self._end(conn, started, export.ref, presenting, "denied", authz.src_attributes)
            self._log_denial(export, presenting, check.decision.policy, authz.src_attributes, conn)
            return 403, [], f"access to {export.ref} denied by policy {check.decision.policy}\n".encode()
        if state.authority is None:
            return 503, [], b"this gateway has no token key yet\n"
        token = state.authority.mint_access_token(presenting, export.namespace, export.name, check.src)
        return 200, [(codec.ACCESS_TOKEN_HEADER, token)], b""

    def _log_denial(self, export: ExportView, peer: str, policy: str, src: Mapping[str, str], conn: str = "") -> None:
        """A policy denial at info level, at most one line per (Export, peer, policy) per 10 s; and
        in the next report to the control plane (configured peers only)."""
        if peer in self._state().peers:
            self._denials.add(DIRECTION, export.namespace, export.name, peer, policy)
        client = attributes(src)
        ref = export.ref
        self._throttle.info(f"denied:{ref}:{peer}:{policy}", "Ingress from peer %s to Export %s denied by "
                            "policy %s (client: %s)", peer, ref, policy, client,
                            extra=fields(conn=conn, direction=DIRECTION, export=ref, peer=peer, verdict="deny",
                                         policy=policy, client=client))

    def _peer_label(self, peer: str) -> str:
        """A peer without a Peer object (served with --unconfigured-peers serve) is UNCONFIGURED_PEER_LABEL."""
        return peer if peer in self._state().peers else UNCONFIGURED_PEER_LABEL

    def _count(self, service: str, peer: str, result: str) -> None:
        """Count a connection or request; `service` is an Export that exists (or UNKNOWN_LABEL)."""
        self._metrics.child(self._metrics.connections, DIRECTION, service, self._peer_label(peer), result).inc()

    def _end(self, conn: str, started: float, service: str, peer: str, result: str,
             client: Mapping[str, str] | None = None, *, setup: float | None = None, to_service: int = 0,
             to_client: int = 0) -> None:
        """A CONNECT ended (refused, or its relay finished): count it, and its access-log line."""
        self._count(service, peer, result)
        if conn:
            self._access.write(conn=conn, direction=DIRECTION, service_kind="export", service=service, peer=peer,
                               client=client, result=result, started=started, setup=setup,
                               to_service=to_service, to_client=to_client)

    def _count_decision(self, decision) -> None:  # type: ignore[no-untyped-def]
        verdict = "allow" if decision.allowed else "deny"
        self._metrics.child(self._metrics.authz_decisions, DIRECTION, verdict, decision.tier.value).inc()

    # --- CONNECT -----------------------------------------------------------------------------

    async def _refuse(self, stream: TlsStream, http: ServerConnection, status: int, message: str) -> bool:
        stream.write(http.respond(status, body=f"{message}\n".encode(), close=True))
        await _linger_close(stream)
        return False

    async def _connect(self, stream: TlsStream, http: ServerConnection, request: Request, presenting: str) -> bool:
        """Serve a CONNECT; True when it was a framed tunnel that ended cleanly (the connection
        then carries the next request), False when the connection is done."""
        started = time.monotonic()
        conn = self._access.new_id()
        state = self._state()
        token = codec.bearer_token(request.header("authorization"))
        if token is None:
            self._end(conn, started, "", presenting, "unauthorized")
            self._bad("no-token", "CONNECT from peer %s refused: no bearer token", presenting)
            return await self._refuse(stream, http, 401, "a bearer token is required")
        if state.authority is None:
            return await self._refuse(stream, http, 503, "this gateway has no token key yet")
        try:
            grant = self._grants.verify(state.authority, token, presenting)
        except TokenError as exc:
            self._end(conn, started, "", presenting, "unauthorized")
            self._bad(f"token-{exc.reason}", "CONNECT from peer %s refused: %s", presenting, exc)
            return await self._refuse(stream, http, 401, f"access token refused: {exc.reason}")
        export = _valid_export(state, grant.export_namespace, grant.export_name)
        ref = f"{grant.export_namespace}/{grant.export_name}"
        client = grant.src_attributes
        if export is None:
            self._end(conn, started, UNKNOWN_LABEL, presenting, "not-found", client)
            return await self._refuse(stream, http, 404, f"no valid export {ref}")
        udp = request.header(datagrams.PROTOCOL_HEADER) == datagrams.UDP
        wanted = "UDP" if udp else "TCP"
        if wanted not in export.protocols:
            self._end(conn, started, ref, presenting, "wrong-protocol", client)
            self._bad("wrong-protocol", "CONNECT from peer %s refused: export %s does not carry %s", presenting,
                      ref, wanted)
            return await self._refuse(stream, http, 400, f"export {ref} does not carry {wanted}")
        check = ingress_check(state, export, client, presenting)
        self._count_decision(check.decision)
        if not check.decision.allowed:
            self._end(conn, started, ref, presenting, "denied", client)
            self._log_denial(export, presenting, check.decision.policy, client, conn)
            return await self._refuse(stream, http, 403, f"access to {ref} denied by policy {check.decision.policy}")

        try:
            service = await (self._open_udp_flow(export) if udp else self._open_service(export))
        except TimeoutError:
            self._end(conn, started, ref, presenting, "service-timeout", client)
            self._throttle.warning(f"service:{ref}", "Export %s: no connection to %s:%d within %g s", ref,
                                   export.host, export.port, self._limits.connect_timeout)
            return await self._refuse(stream, http, 503, f"export {ref} did not accept a connection in time")
        except OSError as exc:
            self._end(conn, started, ref, presenting, "service-error", client)
            self._throttle.warning(f"service:{ref}", "Export %s: cannot connect to %s:%d: %s", ref, export.host,
                                   export.port, exc.strerror or exc)
            return await self._refuse(stream, http, 502, f"export {ref} refused the connection")

        framed = bool(self._framing_header) and request.header(framing.TUNNEL_HEADER) == framing.FRAMED
        http.switch_to_tunnel()
        stream.buffer_little(False)
        stream.write(self._accepted[framed])
        stream.unread(http.trailing_data)  # the client's first bytes, raw or framed
        labels = (DIRECTION, ref, self._peer_label(presenting))
        setup = time.monotonic()
        self._metrics.child(self._metrics.setup_seconds, *labels).observe(setup - started)
        relay = Relay(stream, service, framed="client" if framed else None)
        relay.start_upstream()
        relay.start_downstream()
        self._meter.track(relay, labels)
        active = self._metrics.child(self._metrics.active, DIRECTION)
        active.inc()
        try:
            outcome = await relay.wait()
        except asyncio.CancelledError:
            relay.abort()
            raise
        finally:
            active.dec()
            self._meter.untrack(relay)
        self._end(conn, started, ref, presenting, "ok" if outcome.outcome == "closed" else "reset", client,
                  setup=setup, to_service=outcome.client_to_service, to_client=outcome.service_to_client)
        return outcome.reusable

    async def _open_service(self, export: ExportView) -> TcpStream:
        async with asyncio.timeout(self._limits.connect_timeout):
            return await connect_tcp(export.host, export.port)

    async def _open_udp_flow(self, export: ExportView) -> TcpStream:
        """One UDP flow to the service: its own connected socket, datagram capsules on the stream."""
        async with asyncio.timeout(self._limits.connect_timeout):
            stream, _ = await datagrams.connect_udp(export.host, export.port,
                                                    idle_timeout=self._limits.udp_idle_timeout)
        return stream


def _valid_export(state: GatewayState, namespace: str, name: str) -> ExportView | None:
    export = state.exports.get((namespace, name))
    return export if export is not None and export.valid else None


def _peer(stream: Stream) -> str:
    name = stream.peername
    return f"{name[0]}:{name[1]}" if name else "?"
