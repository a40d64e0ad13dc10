"""Egress: connections from local clients to an Import, carried to a remote peer's export.

Clients arrive on the agent port (a preamble names the Import and the client's attributes, and
carries the agent's credential: without a valid one the connection is reset, so a pod cannot
forge attributes by talking to the gateway directly) or on an Import's target port (no preamble,
client attributes unknown). Then, for each source in load-balancing order (`lb`): the local
egress policy check (`decisions`), an access token (`authorizer`: cached, or `POST /authz`), a
tunnel from the peer's pool, and `CONNECT` with the token, followed at once by the client's
bytes, so that a new connection pays no round trip before its first byte leaves (only to gateways
that announced this implementation's extensions: the original's data plane may drop bytes that
arrive before its 200, so other peers get them after it). A copy of what was sent is kept
(`Limits.replay_bytes`) until the peer answers 200; on any other answer the next source gets the
same bytes (a cached token refused with 401 is first retried once with a fresh
one; a pooled tunnel that broke is first retried once with a new tunnel). When every source
failed, or the bytes sent outgrew the copy, the client's connection is reset (RST).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controlplane.api.attributes import only_client
from controlplane.api.logsetup import fields
from controlplane.api.preamble import Preamble, PreambleError, PreambleReader
from controlplane.peerwire.client import ExchangeFailed, PeerConnection, PeerError
from controlplane.peerwire.stream import Stream, StreamError
from controlplane.tokens import TokenError

from .accesslog import AccessLog
from .agentcredentials import AgentCredentials
from .authorizer import AuthzRefused, RemoteAuthorizer
from .config import Limits
from .counters import SharedCounters
from .decisions import egress_check, egress_src
from .denials import DenialReports
from .health import PeerHealth
from .lb import RANDOM, ROUND_ROBIN, source_order
from .logthrottle import LogThrottle, attributes
from .metrics import UNKNOWN_LABEL, GatewayMetrics
from .pool import TunnelPool, TunnelPools
from .relay import Relay, RelayMeter
from .state import GatewayState, ImportView, PeerView, SourceView

log = logging.getLogger(__name__)

DIRECTION = "egress"


@dataclass
class _Attempt:
    """How trying one source ended, when it did not carry the connection."""

    result: str
    replay: bytearray | None  # what to send to the next source; None: too much was sent already
    client_gone: bool = False


@dataclass
class _Client:
    """One client connection: what its access-log line and its metrics need."""

    started: float  # time.monotonic() at accept
    imp: ImportView
    attrs: Mapping[str, str]
    conn_id: str = ""  # set when the access log is on
    udp: bool = False  # one UDP flow (datagram capsules), from an agent's preamble


class Egress:
    def __init__(self, *, state: Callable[[], GatewayState], pools: TunnelPools, authorizer: RemoteAuthorizer,
                 counters: SharedCounters, health: PeerHealth, metrics: GatewayMetrics, limits: Limits,
                 meter: RelayMeter, access: AccessLog | None = None, denials: DenialReports | None = None) -> None:
        self._state = state
        self._pools = pools
        self._authorizer = authorizer
        self._counters = counters
        self._health = health
        self._metrics = metrics
        self._limits = limits
        self._meter = meter
        self._throttle = LogThrottle(log, interval=10.0)
        self._credentials = AgentCredentials()
        self._access = access or AccessLog(False)
        self._denials = denials if denials is not None else DenialReports()

    # --- entry points ------------------------------------------------------------------------

    async def serve_agent(self, stream: Stream) -> None:
        """A connection on the agent port: preamble, credential, then the Import."""
        started = time.monotonic()
        try:
            preamble = await self._read_preamble(stream)
        except (PreambleError, StreamError, TimeoutError) as exc:
            reason = ("preamble" if isinstance(exc, PreambleError) else
                      "timeout" if isinstance(exc, TimeoutError) else exc.reason)
            self._metrics.child(self._metrics.bad_requests, "agent", reason).inc()
            self._throttle.warning(f"preamble:{reason}", "Agent-port connection from %s reset: %s",
                                   _peer(stream), exc or "no preamble in time")
            stream.abort()
            return
        if preamble is None:  # a connection an agent opened ahead of need and closed unused
            stream.close()
            return
        state = self._state()
        if state.authority is None:
            self._metrics.child(self._metrics.agent_credential_failures, "no-key").inc()
            stream.abort()
            return
        try:
            self._credentials.verify(state.authority, preamble.credential)
        except TokenError as exc:
            self._metrics.child(self._metrics.agent_credential_failures, exc.reason).inc()
            self._throttle.warning(f"credential:{exc.reason}", "Agent-port connection from %s for Import %s/%s "
                                   "reset: invalid agent credential (%s)", _peer(stream), preamble.import_namespace,
                                   preamble.import_name, exc)
            stream.abort()
            return
        imp = state.imports.get((preamble.import_namespace, preamble.import_name))
        if imp is None:
            # The label is fixed: only configured objects name a series (the name is in the log).
            self._count(UNKNOWN_LABEL, "", "unknown-import")
            self._throttle.warning("unknown-import", "Agent-port connection from %s reset: no Import %s/%s",
                                   _peer(stream), preamble.import_namespace[:100], preamble.import_name[:100],
                                   extra=fields(direction=DIRECTION, result="unknown-import"))
            stream.abort()
            return
        if not self._carries(stream, imp, "UDP" if preamble.udp else "TCP"):
            return
        await self._forward(stream, state, _Client(started, imp, only_client(preamble.client),
                                                   self._access.new_id(), udp=preamble.udp))

    def _carries(self, stream: Stream, imp: ImportView, protocol: str) -> bool:
        """Whether the Import carries `protocol`; if not, the connection is counted and reset."""
        if protocol in imp.protocols:
            return True
        self._count(imp.ref, "", "wrong-protocol")
        self._throttle.warning(f"wrong-protocol:{imp.ref}", "Connection from %s reset: Import %s does not carry %s",
                               _peer(stream), imp.ref, protocol,
                               extra=fields(direction=DIRECTION, result="wrong-protocol"))
        stream.abort()
        return False

    async def serve_import(self, stream: Stream, port: int, *, udp: bool = False) -> None:
        """A connection on an Import's target port (`udp`: a flow of datagrams to it): no preamble,
        unknown client."""
        started = time.monotonic()
        state = self._state()
        imp = state.imports_by_port.get(port)
        if imp is None:
            self._count(UNKNOWN_LABEL, "", "unknown-import")
            stream.abort()
            return
        if not self._carries(stream, imp, "UDP" if udp else "TCP"):
            return
        await self._forward(stream, state, _Client(started, imp, {}, self._access.new_id(), udp=udp))

    async def _read_preamble(self, stream: Stream) -> Preamble | None:
        """The preamble; None when the connection ended cleanly before its first byte."""
        reader = PreambleReader()
        received = False
        async with asyncio.timeout(self._limits.request_timeout):
            while True:
                data = await stream.read()
                if not data:
                    if not received:
                        return None
                    raise PreambleError("the connection ended before the preamble was complete")
                received = True
                preamble = reader.feed(data)
                if preamble is not None:
                    stream.unread(reader.rest)
                    return preamble

    # --- forwarding --------------------------------------------------------------------------

    def _count(self, service: str, peer: str, result: str) -> None:
        self._metrics.child(self._metrics.connections, DIRECTION, service, peer, result).inc()

    def _end(self, ctx: _Client, peer: str, result: str, *, setup: float | None = None, to_service: int = 0,
             to_client: int = 0, tried: str = "") -> None:
        """A connection of an Import ended: count it, and its access-log line (`tried`: the last
        peer tried, for a connection that no peer carried; its metrics have no peer)."""
        self._count(ctx.imp.ref, peer, result)
        if ctx.conn_id:
            self._access.write(conn=ctx.conn_id, direction=DIRECTION, service_kind="import", service=ctx.imp.ref,
                               peer=peer or tried, client=ctx.attrs, result=result, started=ctx.started, setup=setup,
                               to_service=to_service, to_client=to_client)

    async def _forward(self, client: Stream, state: GatewayState, ctx: _Client) -> None:
        imp = ctx.imp
        src = egress_src(state, ctx.attrs)
        scheme = imp.lb_scheme
        counter = self._counters.increment(imp.ref) if scheme == ROUND_ROBIN else 0
        rnd = random.getrandbits(32) if scheme == RANDOM else 0
        unreachable = set()
        for i, source in enumerate(imp.sources):
            peer = state.peers.get(source.peer)
            if peer is None or self._health.unreachable(peer):
                unreachable.add(i)
        order = source_order(scheme, len(imp.sources), counter=counter, random_value=rnd, unreachable=unreachable)
        replay: bytearray | None = bytearray()
        result = "no-source"
        tried = ""
        try:
            for attempt_no, index in enumerate(order):
                if attempt_no and scheme == ROUND_ROBIN:
                    # ClusterLink advances the Import's counter on every selection, failovers included:
                    # with one source gone, the others then alternate instead of the next one taking
                    # the failed one's turns too.
                    self._counters.increment(imp.ref)
                source = imp.sources[index]
                peer = state.peers.get(source.peer)
                if peer is None:
                    result = "unknown-peer"
                    self._throttle.warning(f"unknown-peer:{imp.ref}:{source.peer}", "Import %s: source peer %s is "
                                           "not a known Peer; trying the next source", imp.ref, source.peer)
                    continue
                tried = peer.name
                check = egress_check(state, imp, source, peer, src)
                decision = check.decision
                verdict = "allow" if decision.allowed else "deny"
                self._metrics.child(self._metrics.authz_decisions, DIRECTION, verdict, decision.tier.value).inc()
                if not decision.allowed:
                    result = "denied"
                    self._denials.add(DIRECTION, imp.namespace, imp.name, peer.name, decision.policy)
                    client_text = attributes(src)
                    self._throttle.info(f"denied:{imp.ref}:{peer.name}:{decision.policy}", "Egress for Import %s to "
                                        "%s/%s on peer %s denied by policy %s (client: %s)", imp.ref,
                                        source.export_namespace, source.export_name, peer.name, decision.policy,
                                        client_text, extra=fields(
                                            conn=ctx.conn_id, direction=DIRECTION, import_=imp.ref, peer=peer.name,
                                            verdict="deny", policy=decision.policy, client=client_text))
                    continue
                assert replay is not None
                attempt = await self._try_source(client, ctx, source, peer, src, replay,
                                                 fallback=attempt_no + 1 < len(order))
                if attempt is None:
                    return
                result = attempt.result
                if attempt.client_gone:
                    self._end(ctx, peer.name, "client-reset")
                    return
                replay = attempt.replay
                if replay is None:
                    result = "replay-overflow"
                    break
        except asyncio.CancelledError:
            client.abort()
            raise
        self._end(ctx, "", result, tried=tried)
        client.abort()

    async def _try_source(self, client: Stream, ctx: _Client, source: SourceView, peer: PeerView,
                          src: Mapping[str, str], replay: bytearray, *, fallback: bool = False) -> _Attempt | None:
        """Carry the connection through `source`; None when it was carried (and is now finished).
        `fallback`: another source follows, so a peer marked down while we wait for its answer is
        given up at once (the pool aborts the tunnel) instead of after --response-timeout."""
        imp = ctx.imp
        pool = self._pools.get(peer)
        retried = False
        while True:
            try:
                grant = await self._authorizer.grant(peer, source, src)
            except AuthzRefused as exc:
                return _Attempt(_refusal(exc.status), replay)
            except PeerError as exc:
                log.debug("Egress for Import %s: peer %s unreachable: %s", imp.ref, peer.name, exc)
                return _Attempt("unreachable", replay)
            if pool.early_data and not replay and not client.buffered and not client.at_eof:
                # Let the loop run the client's read callback once (its first bytes usually arrived
                # with the accept), so that they leave in the same record and segment as the CONNECT.
                await asyncio.sleep(0)
            try:
                conn, pooled = await pool.acquire(returns=pool.framing, abortable=fallback)
            except PeerError:
                return _Attempt("unreachable", replay)

            framed = pool.framing
            relay = Relay(client, conn.stream, framed="service" if framed else None)
            if pool.early_data:
                early = bytes(replay) + client.take_buffered()
                conn.send_connect(grant.token, early, framed=framed, udp=ctx.udp)
                relay.start_upstream(tap=bytearray(early), tap_limit=self._limits.replay_bytes)
            else:
                # The client's bytes wait in its buffer (reading pauses when it is full) for the 200.
                client.unread(bytes(replay))
                replay = bytearray()
                conn.send_connect(grant.token, framed=framed, udp=ctx.udp)
            pool.expect_answer(conn, fallback=fallback)
            try:
                response = await conn.connect_response(self._limits.response_timeout)
            except ExchangeFailed as exc:
                if relay.finished.done() or client.error is not None:
                    return _Attempt("client-reset", None, client_gone=True)
                kept = relay.detach_upstream()
                conn.abort()
                if fallback and self._health.unreachable(peer):
                    # marked down while we waited (by a probe, a failed connect): the next source
                    self._metrics.child(self._metrics.failovers, peer.name).inc()
                    log.debug("Egress for Import %s: peer %s went down before answering; next source",
                              imp.ref, peer.name)
                    return _Attempt("unreachable", kept)
                if kept is not None and not retried and (pooled or pool.gave_up(conn)):
                    if pooled:
                        pool.report_stale()
                    retried, replay = True, kept
                    continue
                log.debug("Egress for Import %s: CONNECT to peer %s failed: %s", imp.ref, peer.name, exc)
                return _Attempt("unreachable", kept)
            except asyncio.CancelledError:
                relay.abort()
                raise
            finally:
                pool.answered(conn)

            if 200 <= response.status < 300 and response.framing != framed:
                # We framed our bytes for a gateway that answered with a raw tunnel (or the other
                # way round): this attempt is lost; retry once, without framing.
                kept = relay.detach_upstream()
                conn.abort()
                pool.announced = False
                if kept is not None and not retried:
                    retried, replay = True, kept
                    continue
                return _Attempt("remote-error", kept)

            if 200 <= response.status < 300:
                await self._carry(client, conn, relay, ctx, pool)
                return None

            kept = relay.detach_upstream()
            conn.close()
            self._authorizer.invalidate(grant)
            if response.status == 401 and grant.cached and not retried and kept is not None:
                retried, replay = True, kept
                continue
            log.debug("Egress for Import %s: peer %s refused CONNECT: %s", imp.ref, peer.name, response.summary())
            return _Attempt(_refusal(response.status), kept)

    async def _carry(self, client: Stream, conn: PeerConnection, relay: Relay, ctx: _Client,
                     pool: TunnelPool) -> None:
        if relay.upstream_started:
            relay.commit()
        else:
            relay.start_upstream()
        labels = (DIRECTION, ctx.imp.ref, pool.name)
        setup = time.monotonic()
        self._metrics.child(self._metrics.setup_seconds, *labels).observe(setup - ctx.started)
        conn.stream.unread(conn.trailing_data)  # the service's first bytes, raw or framed
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
        self._end(ctx, pool.name, "ok" if outcome.outcome == "closed" else "reset", setup=setup,
                  to_service=outcome.client_to_service, to_client=outcome.service_to_client)
        if outcome.reusable:
            conn.recycle()
            pool.release(conn)
            self._metrics.child(self._metrics.tunnel_reuses, pool.name).inc()


def _refusal(status: int) -> str:
    return {401: "remote-unauthorized", 403: "remote-denied", 404: "remote-not-found"}.get(status, "remote-error")


def _peer(stream: Stream) -> str:
    name = stream.peername
    return f"{name[0]}:{name[1]}" if name else "?"
