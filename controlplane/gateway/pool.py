"""Tunnel pools: established, verified mTLS connections to remote peers' gateways, kept ready.

A new application connection should not pay a TCP and TLS handshake with the remote peer on its
critical path. Each worker keeps, per remote peer that one of our Imports uses, up to `size`
idle `PeerConnection`s: connected, handshaken (the server certificate checked against the peer
name), and exercised once with `GET /healthz` so that TLS 1.3 session tickets arrived (the next
connection resumes). Egress takes one (`acquire`), sends `/authz` on it and gives it back
(`release`), or sends `CONNECT` and keeps it for the relay. A background loop per pool refills it
and checks every idle connection with `GET /healthz` every `keepalive` seconds; a connection that
fails its check, or whose other side goes away, is dropped at once.

The pool follows demand: it keeps at least `size` idle tunnels, and as many as were in use at once
in the last one to two demand windows (`--pool-demand-window`, up to `max_size`), so that a burst of N concurrent connections
finds N tunnels the next time instead of closing all but `size` of them on the way back and paying
a handshake per connection. Idle tunnels above what the recent demand needs are closed by the
upkeep loop once the demand has been lower for a whole window.

A framed tunnel comes back to the pool when its application connection ends, usually within
milliseconds: the pool counts a tunnel lent that way as *returning* for `RETURN_GRACE` seconds and
refills only what is missing beyond the returning ones. So a steady flow of short connections
causes no refill (no handshake competing with the connections for the CPU), while a tunnel held
by a long connection is replaced once its grace is over. A taken tunnel that will not come back
(a raw tunnel, to a peer without framing) is replaced after `REFILL_DELAY`.

Connecting tries every gateway of the peer at once (the first handshake wins; other successes
join the pool). When none can be reached the peer is marked down in `PeerHealth` at once (load
balancing then tries it last) until a connection or a probe succeeds again; refills retry with
backoff. A refused or reset peer (its gateway killed) is noticed that way within a round trip. A
frozen or cut-off one refuses nothing, so while the pool is in use (a tunnel lent in the last
demand window) it is also *probed*: every `Limits.probe_interval` each gateway of the peer
answers `GET /healthz` within `Limits.probe_timeout` on the idle tunnel to it unused the longest
(or, when there is none, a new one, handshake included, which joins the pool in the place of a
tunnel to another gateway when the pool is full). A peer with several gateways whose probe fails
on some of them stays up: those gateways are marked down (no new tunnels to them, their idle
tunnels dropped, the CONNECTs waiting on tunnels to them aborted and retried on another, see
`gave_up`) until a probe to them succeeds again. When no gateway answers, the peer is marked down.
Marking a
peer down also aborts the tunnels of the CONNECTs still waiting for its answer, and the connects
of acquires, whose connections have another source to go to (`expect_answer`, `acquire(abortable=True)`): egress replays their bytes there instead of
waiting out --response-timeout. This is the sub-second failover the heartbeats (seconds) only
back up.
"""

from __future__ import annotations

import asyncio
import logging
import time
import ssl
import weakref
from collections import deque
from collections.abc import Awaitable, Iterable

from controlplane.api.logsetup import fields
from controlplane.peerwire.client import (
    ExchangeFailed,
    Gateway,
    PeerConnection,
    PeerError,
    PeerUnreachable,
    describe,
    first_success,
)
from controlplane.tlsconfig import PeerTLS

from .config import Limits
from .health import PeerHealth, judge_probes
from .logthrottle import LogThrottle
from .metrics import GatewayMetrics
from .state import PeerView
from .tasks import TaskSet

log = logging.getLogger(__name__)

RETRY_MIN = 0.2
RETRY_MAX = 5.0
# How often to cache a fresh TLS session ticket for resumption (reading a session out of a
# connection costs ~0.1 ms of CPU in CPython; one ticket resumes any number of handshakes).
SESSION_REFRESH = 60.0
# A refill caused by taking a tunnel waits this long, so that the connection that took it goes
# through its setup first (on both gateways) rather than behind a handshake.
REFILL_DELAY = 0.005
# How long a tunnel lent to a framed connection counts as coming back (see the module docstring).
RETURN_GRACE = 1.0
# How long a peak of concurrent tunnels keeps the pool that large (see the module docstring).
DEMAND_WINDOW = 30.0


class Demand:
    """The most tunnels in use at once over the last one to two windows (two buckets, no per-event
    history: O(1) per observation)."""

    __slots__ = ("window", "_start", "_current", "_previous")

    def __init__(self, window: float = DEMAND_WINDOW) -> None:
        self.window = window
        self._start = -window
        self._current = 0
        self._previous = 0

    def _roll(self, now: float) -> None:
        if now - self._start >= self.window:
            # One window passed: the current bucket becomes the previous; two or more: both empty.
            self._previous = self._current if now - self._start < 2 * self.window else 0
            self._current = 0
            self._start = now

    def observe(self, in_use: int, now: float) -> None:
        self._roll(now)
        if in_use > self._current:
            self._current = in_use

    def peak(self, now: float) -> int:
        self._roll(now)
        return max(self._current, self._previous)


class TunnelPool:
    """The ready connections of one worker to one remote peer."""

    def __init__(self, peer: PeerView, *, tls: PeerTLS, size: int, keepalive: float, limits: Limits,
                 metrics: GatewayMetrics, health: PeerHealth, throttle: LogThrottle, framing: bool = True,
                 max_size: int | None = None, demand_window: float = DEMAND_WINDOW) -> None:
        self.peer = peer
        self.size = size
        # size 0 means no pooling at all (connect on demand), whatever the demand
        self.max_size = 0 if size == 0 else max(size, max_size if max_size is not None else size)
        self._demand = Demand(demand_window)
        self._tls = tls
        self._keepalive = keepalive
        self._limits = limits
        self._metrics = metrics
        self._health = health
        self._throttle = throttle
        self._idle: deque[PeerConnection] = deque()
        self._epochs: weakref.WeakKeyDictionary[PeerConnection, int] = weakref.WeakKeyDictionary()
        self._epoch = 0  # bumped when our certificates change: older connections are not reused
        self._wake = asyncio.Event()
        self._closed = False
        self._session_at: float | None = None
        self._taken = False
        # Lent connections expected back (framed tunnels, exchanges), with the time they were lent.
        self._lent: weakref.WeakKeyDictionary[PeerConnection, float] = weakref.WeakKeyDictionary()
        # The peer's gateways announced framed tunnels (peerwire.framing): they are gateways of this
        # implementation, which also take application bytes right behind a CONNECT.
        self.announced = False
        self._use_framing = framing  # we may frame tunnels (--framed-tunnels)
        # CONNECTs waiting for the peer's answer (`expect_answer`), and whether their connection
        # could go to another source (then marking the peer down aborts them too).
        self._waiting: weakref.WeakKeyDictionary[PeerConnection, bool] = weakref.WeakKeyDictionary()
        self._connecting: set[asyncio.Future[PeerConnection]] = set()  # abortable acquires' connects
        self._probing = 0  # idle tunnels out for a probe (they count as idle: no refill for them)
        # Gateways of the peer whose probe failed (the peer is down only when all of them are):
        # connects leave them out while another gateway is up; the probes try them again.
        self._down_gateways: set[Gateway] = set()
        # Tunnels aborted because their gateway was marked down (egress retries them on another).
        self._given_up: weakref.WeakSet[PeerConnection] = weakref.WeakSet()
        self._lent_at = -demand_window  # when a tunnel was last lent (probing runs while in use)

    @property
    def name(self) -> str:
        return self.peer.name

    @property
    def idle(self) -> int:
        return len(self._idle)

    def target(self, now: float | None = None) -> int:
        """How many idle tunnels to keep: `size`, or the recent peak of concurrent use, at most
        `max_size`."""
        peak = self._demand.peak(time.monotonic() if now is None else now)
        return min(self.max_size, max(self.size, peak))

    def _changed(self) -> None:
        self._metrics.child(self._metrics.pool_idle, self.name).set(len(self._idle) + self._probing)

    def update(self, peer: PeerView) -> None:
        """A new snapshot's view of the peer; connections to gateways it no longer has are dropped."""
        old = self.peer
        self.peer = peer
        if old.gateways != peer.gateways:
            self.announced = False  # to be learned again from the new gateways' answers
            keep = set(peer.gateways)
            self._down_gateways &= keep
            for conn in [c for c in self._idle if c.gateway not in keep]:
                self._take_idle(conn).close()
            self._changed()
            self._wake.set()

    # --- taking and giving back --------------------------------------------------------------

    async def acquire(self, *, returns: bool = True, abortable: bool = False) -> tuple[PeerConnection, bool]:
        """A ready connection (True: from the pool) or a new one; raises PeerUnreachable.

        `returns`: the caller gives it back soon (`release`: an exchange, a framed tunnel), so the
        pool does not replace it unless it stays away longer than `RETURN_GRACE`. `abortable`:
        the caller has another source, so a connect is given up (PeerUnreachable) as soon as the
        peer is marked down, instead of after --connect-timeout."""
        while self._idle:
            conn = self._idle.popleft()
            conn.stream.set_watcher(None)
            if conn.usable:
                self._changed()
                self._lend(conn, returns)
                self._metrics.child(self._metrics.pool_acquires, self.name, "hit").inc()
                return conn, True
            conn.abort()
        self._changed()
        self._metrics.child(self._metrics.pool_acquires, self.name, "miss").inc()
        if abortable:
            conn = await self._abortable_connect()
        else:
            conn = await self._connect()
        self._lend(conn, returns)
        return conn, False

    async def _abortable_connect(self) -> PeerConnection:
        task = asyncio.ensure_future(self._connect())
        self._connecting.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise PeerUnreachable(f"peer {self.name!r} was marked down while connecting") from None
            task.cancel()
            raise
        finally:
            self._connecting.discard(task)

    def _lend(self, conn: PeerConnection, returns: bool) -> None:
        now = time.monotonic()
        self._lent_at = now
        if returns:
            self._lent[conn] = now
            # Lent connections the worker still holds (a dead one leaves the weak dictionary when
            # its connection is dropped): the concurrency the pool should be ready for next time.
            self._demand.observe(len(self._lent), now)
        else:
            self._taken = True
        have = len(self._idle) + self._probing
        if have < self.size and have + self._returning(now) < self.size:  # counting the lent ones costs O(lent)
            self._wake.set()  # the upkeep loop refills

    def _returning(self, now: float) -> int:
        """How many lent connections are expected back (alive, lent less than RETURN_GRACE ago)."""
        return sum(1 for conn, lent_at in self._lent.items() if now - lent_at < RETURN_GRACE and conn.stream.alive)

    @property
    def framing(self) -> bool:
        """Ask for framed tunnels."""
        return self.announced and self._use_framing

    @property
    def early_data(self) -> bool:
        """Send the client's bytes right behind CONNECT (the original's data plane may not read
        what arrives before its 200, so only to gateways that announced themselves)."""
        return self.announced

    def learn(self, conn: PeerConnection) -> None:
        """Remember what the peer's answers on `conn` said it supports."""
        if conn.framing:
            self.announced = True

    def release(self, conn: PeerConnection) -> None:
        """Give back a connection after a request/response exchange or a framed tunnel (closed if
        not wanted)."""
        self._lent.pop(conn, None)
        self.learn(conn)
        if (self._closed or not conn.usable or len(self._idle) >= self.target() or conn.gateway not in self.peer.gateways
                or not self._current(conn)):
            conn.close()
            return
        self._add_idle(conn)

    def _current(self, conn: PeerConnection) -> bool:
        return self._epochs.get(conn, -1) == self._epoch

    def certificates_changed(self) -> None:
        """Our certificates (or the CA) changed: close the idle tunnels and never reuse one that was
        handshaken before, so the next connection proves the new identity to the peer."""
        self._epoch += 1
        self._session_at = None
        self._tls.forget_session(self.name)
        while self._idle:
            conn = self._idle.popleft()
            conn.stream.set_watcher(None)
            conn.close()
        self._changed()
        self._wake.set()

    def expect_answer(self, conn: PeerConnection, *, fallback: bool) -> None:
        """`conn`'s CONNECT waits for the peer (`answered` when the answer came). It is aborted
        when its gateway is marked down (the peer has others: egress retries it there, `gave_up`)
        and, when its connection has another source (`fallback`), when the peer is marked down."""
        if fallback or len(self.peer.gateways) > 1:
            self._waiting[conn] = fallback

    def answered(self, conn: PeerConnection) -> None:
        self._waiting.pop(conn, None)

    def gave_up(self, conn: PeerConnection) -> bool:
        """Whether the pool aborted `conn` because its gateway was marked down (the peer has others)."""
        return conn in self._given_up

    def _gateway_down(self, gateway: Gateway, detail: object) -> None:
        """A probe to one gateway of a peer with several failed: new tunnels go to the others, and
        the CONNECTs waiting on a tunnel to it are aborted (egress retries them)."""
        if gateway not in self._down_gateways:
            self._down_gateways.add(gateway)
            log.warning("Gateway %s of peer %s is marked down for new tunnels from this gateway (probe): %s",
                        describe(gateway), self.name, detail,
                        extra=fields(peer=self.name, result="down", reason="probe", gateway=describe(gateway)))
            self._metrics.child(self._metrics.gateway_reachable, self.name, describe(gateway)).set(0)
        for conn in [c for c in self._idle if c.gateway == gateway]:
            self._take_idle(conn).abort()
        self._changed()
        for conn in [c for c in self._waiting if c.gateway == gateway]:
            del self._waiting[conn]
            self._given_up.add(conn)
            conn.abort()

    def _gateway_up(self, gateway: Gateway) -> None:
        if gateway in self._down_gateways:
            self._down_gateways.discard(gateway)
            log.info("Gateway %s of peer %s answers probes again: marked up", describe(gateway), self.name,
                     extra=fields(peer=self.name, result="up", reason="probe", gateway=describe(gateway)))
        self._metrics.child(self._metrics.gateway_reachable, self.name, describe(gateway)).set(1)

    def _peer_down(self, reason: str, detail: object) -> None:
        if self._health.mark(self.name, False, reason):
            log.warning("Peer %s is marked down for new connections from this gateway (%s): %s", self.name,
                        reason, detail, extra=fields(peer=self.name, result="down", reason=reason))
        for conn, fallback in list(self._waiting.items()):
            if fallback:
                del self._waiting[conn]
                conn.abort()  # egress sees the exchange fail, the peer down: it goes to the next source
        current = asyncio.current_task()
        for task in list(self._connecting):
            if task is not current:
                task.cancel()  # an abortable acquire's connect: its caller goes to the next source

    def report_stale(self) -> None:
        """A pooled connection broke when it was used."""
        self._metrics.child(self._metrics.tunnel_failures, self.name, "stale").inc()

    def _add_idle(self, conn: PeerConnection) -> None:
        if not self._current(conn):
            conn.close()
            return
        self._idle.append(conn)
        conn.stream.set_watcher(self._wake.set)
        self._changed()

    def _adopt(self, conn: PeerConnection) -> None:
        """A connection that also succeeded in a race of gateways."""
        self._count_handshake(conn)
        if self._closed or len(self._idle) >= self.target():
            conn.close()
        else:
            self._add_idle(conn)

    def _count_handshake(self, conn: PeerConnection) -> None:
        self._epochs[conn] = self._epoch
        kind = "resumed" if conn.resumed else "full"
        self._metrics.child(self._metrics.tunnel_handshakes, self.name, kind).inc()

    # --- connecting --------------------------------------------------------------------------

    async def _connect(self, *, timeout: float | None = None, reason: str = "connect") -> PeerConnection:
        """A new tunnel to the first gateway of the peer that answers (within `timeout`, default
        --connect-timeout), of those not marked down (all when every one is); when none does, the
        peer is marked down (for `reason`)."""
        peer = self.peer
        gateways = [g for g in peer.gateways if g not in self._down_gateways] or list(peer.gateways)
        if not gateways:
            self._peer_down(reason, "it has no gateways")
            raise PeerUnreachable(f"peer {peer.name!r} has no gateways")
        context = self._tls.client_context()
        timeout = self._limits.connect_timeout if timeout is None else timeout

        def attempt(gateway: Gateway):  # type: ignore[no-untyped-def]
            return lambda: self._open(gateway, timeout, context)

        try:
            conn, _ = await first_success([attempt(g) for g in gateways], name=f"connect-{peer.name}",
                                          on_extra=self._adopt)
        except PeerUnreachable as exc:
            self._metrics.child(self._metrics.tunnel_failures, peer.name, "connect").inc()
            self._session_at = None  # whatever comes back may be another server
            self._peer_down(reason, exc)
            raise PeerUnreachable(f"peer {peer.name!r} is unreachable: {exc}") from None
        self._count_handshake(conn)
        if self._health.mark(peer.name, True, "connect"):
            log.info("Peer %s is reachable again from this gateway", peer.name,
                     extra=fields(peer=peer.name, result="up", reason="connect"))
        return conn

    def _open(self, gateway: Gateway, timeout: float, context: ssl.SSLContext | None = None) -> Awaitable[PeerConnection]:
        """A new tunnel to one gateway of the peer (raises PeerUnreachable)."""
        return PeerConnection.open(gateway, peer_name=self.name, context=context or self._tls.client_context(),
                                   timeout=timeout, liveness_timeout=self._limits.liveness_timeout)

    def _take_idle(self, conn: PeerConnection) -> PeerConnection:
        """Out of the idle tunnels (no longer watched for its other side closing); the caller
        closes, aborts, lends or checks it."""
        self._idle.remove(conn)
        conn.stream.set_watcher(None)
        return conn

    # --- background upkeep -------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when something changed."""
        self._wake.clear()
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass  # the time was up: that is what we waited for

    async def _prepare(self, conn: PeerConnection) -> bool:
        """First exchange on a new connection, at once: it proves that the peer accepted our
        certificate, keeps the connection from looking idle to the peer's first-request timeout,
        and brings TLS session tickets (cached for resumption when ours is old or missing)."""
        try:
            await conn.healthz(timeout=self._limits.response_timeout)
        except ExchangeFailed as exc:
            conn.abort()
            self._metrics.child(self._metrics.tunnel_failures, self.name, "keepalive").inc()
            self._throttle.warning(f"prepare:{self.name}", "New tunnel to peer %s failed its first health check: %s",
                                   self.name, exc)
            return False
        self.learn(conn)
        now = time.monotonic()
        if self._session_at is None or now - self._session_at >= SESSION_REFRESH:
            ssl_object = conn.stream.ssl_object
            if ssl_object is not None and self._tls.remember_session(self.name, ssl_object):
                self._session_at = now
        return True

    async def _check_idle(self) -> None:
        """Health-check the idle connections that were not used for `keepalive` seconds."""
        now = time.monotonic()
        for conn in list(self._idle):
            if conn not in self._idle or now - conn.last_used < self._keepalive:
                continue
            self._take_idle(conn)
            self._changed()
            try:
                await self._check(conn, self._limits.response_timeout, "keepalive")
            except ExchangeFailed as exc:
                self._throttle.warning(f"keepalive:{self.name}", "A pooled tunnel to peer %s failed its health "
                                       "check and was dropped: %s", self.name, exc)

    async def _check(self, conn: PeerConnection, timeout: float, reason: str, *, make_room: bool = False) -> None:
        """`GET /healthz` on a tunnel taken out of the pool: answered, it goes back (if still wanted);
        not, it is aborted, counted as a tunnel failure for `reason`, and ExchangeFailed raised.
        `make_room`: a new tunnel to a gateway the pool had none to; when the pool is full it takes
        the place of the longest unused tunnel to another gateway (next time the probe finds it
        idle instead of paying a handshake, and the pool spreads over the peer's gateways)."""
        try:
            await conn.healthz(timeout=timeout)
        except ExchangeFailed:
            conn.abort()
            self._metrics.child(self._metrics.tunnel_failures, self.name, reason).inc()
            raise
        except asyncio.CancelledError:
            conn.abort()
            raise
        self.learn(conn)
        if make_room and not self._closed and conn.usable and len(self._idle) >= self.target():
            others = [c for c in self._idle if c.gateway != conn.gateway]
            if others:
                self._take_idle(min(others, key=lambda c: c.last_used)).close()
        if self._closed or len(self._idle) >= self.target() or not conn.usable:  # e.g. its request cap reached
            conn.close()
        else:
            self._add_idle(conn)

    def _drop_dead(self) -> None:
        for conn in [c for c in self._idle if not c.usable]:
            self._take_idle(conn).abort()
            self._metrics.child(self._metrics.tunnel_failures, self.name, "keepalive").inc()
        self._changed()

    def _trim(self, now: float) -> None:
        """Close the idle tunnels the recent demand no longer needs (the longest unused first)."""
        excess = len(self._idle) - self.target(now)
        if excess <= 0:
            return
        for conn in sorted(self._idle, key=lambda c: c.last_used)[:excess]:
            self._take_idle(conn).close()
        self._changed()

    async def _probe(self) -> None:
        """Probe the peer every probe_interval while the pool is in use (see the module docstring):
        each of its gateways on an idle tunnel to it, or a new one. A gateway that does not answer
        is marked down (new tunnels go to the others); when none answers, the peer is marked down;
        when one does, the peer is up."""
        interval, timeout = self._limits.probe_interval, self._limits.probe_timeout
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            if now - self._lent_at > self._demand.window:
                continue  # not in use: the keepalive checks are enough
            gateways = list(self.peer.gateways)
            if not gateways:
                continue
            answers = await asyncio.gather(*(self._probe_gateway(g, timeout) for g in gateways))
            results = dict(zip(gateways, answers, strict=True))
            verdict = judge_probes(results)
            if not verdict.peer_up:
                for gateway in gateways:
                    self._metrics.child(self._metrics.gateway_reachable, self.name, describe(gateway)).set(0)
                self._peer_down("probe", "; ".join(f"{describe(g)}: {why}" for g, why in results.items()))
                self._wake.set()  # the upkeep replaces what was dropped (and its connect tells more)
                continue
            for gateway in verdict.gateways_up:
                self._gateway_up(gateway)
            for gateway in verdict.gateways_down:
                self._gateway_down(gateway, results[gateway])
            if verdict.gateways_down:
                self._wake.set()
            if self._health.mark(self.name, True, "probe"):
                log.info("Peer %s answers probes again: marked up", self.name,
                         extra=fields(peer=self.name, result="up", reason="probe"))

    async def _probe_gateway(self, gateway: Gateway, timeout: float) -> str | None:
        """Probe one gateway: None when it answered, else why not."""
        usable = [c for c in self._idle if c.usable and c.gateway == gateway]
        if usable:
            conn = self._take_idle(min(usable, key=lambda c: c.last_used))
        else:
            # No idle tunnel to it (all lent, e.g. to connections now waiting for a frozen peer; or
            # the pool's tunnels go to its other gateways; or it was marked down): a new tunnel,
            # with the probe's time for its handshake too. It joins the pool.
            try:
                conn = await self._open(gateway, timeout)
            except PeerError as exc:
                self._metrics.child(self._metrics.tunnel_failures, self.name, "probe").inc()
                return str(exc) or type(exc).__name__
            self._count_handshake(conn)
        self._probing += 1  # counts as idle meanwhile: no refill handshake for it
        try:
            await self._check(conn, timeout, "probe", make_room=not usable)
        except ExchangeFailed as exc:
            return str(exc) or type(exc).__name__
        finally:
            self._probing -= 1
            self._changed()
        return None

    async def run(self) -> None:
        """Refill and check the pool (and probe the peer) until cancelled."""
        if self._limits.probe_interval > 0:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._probe(), name=f"probe-{self.name}")
                await self._upkeep()
        else:
            await self._upkeep()

    async def _upkeep(self) -> None:
        backoff = RETRY_MIN
        while True:
            self._drop_dead()
            now = time.monotonic()
            self._trim(now)
            if len(self._idle) + self._probing + self._returning(now) < self.size:
                if self._taken:
                    self._taken = False
                    await asyncio.sleep(REFILL_DELAY)
                    continue  # a framed tunnel may be back by now
                try:
                    conn = await self._connect()
                except PeerUnreachable as exc:
                    self._throttle.warning(f"refill:{self.name}", "Cannot refill the tunnel pool of peer %s: %s",
                                           self.name, exc)
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, RETRY_MAX)
                    continue
                if await self._prepare(conn):
                    backoff = RETRY_MIN
                    if len(self._idle) < self.size and not self._closed:
                        self._add_idle(conn)
                    else:
                        conn.close()
                else:
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, RETRY_MAX)
                continue
            if self._idle:
                oldest = min(c.last_used for c in self._idle)
                wait = max(0.0, oldest + self._keepalive - now)
            else:
                wait = self._keepalive
            returning = [lent_at for conn, lent_at in self._lent.items()
                         if now - lent_at < RETURN_GRACE and conn.stream.alive]
            if returning:  # look again when the grace of the earliest lent one is over
                wait = min(wait, max(0.0, min(returning) + RETURN_GRACE - now))
            if len(self._idle) > self.size:  # look again when the demand may have fallen
                wait = min(wait, self._demand.window)
            await self._sleep(wait)
            await self._check_idle()

    def refresh_age(self, now: float | None = None) -> None:
        """Publish the age of the oldest idle tunnel (0 when none is idle)."""
        now = time.monotonic() if now is None else now
        oldest = min((c.created_at for c in self._idle), default=now)
        self._metrics.child(self._metrics.pool_oldest, self.name).set(now - oldest)

    def close(self) -> None:
        self._closed = True
        while self._idle:
            conn = self._idle.popleft()
            conn.stream.set_watcher(None)
            conn.close()
        self._changed()
        self.refresh_age()


class TunnelPools:
    """A worker's pools, one per remote peer its Imports use, each with its upkeep task."""

    def __init__(self, *, tls: PeerTLS, size: int, keepalive: float, limits: Limits, metrics: GatewayMetrics,
                 health: PeerHealth, tasks: TaskSet, framing: bool = True, max_size: int | None = None,
                 demand_window: float = DEMAND_WINDOW) -> None:
        self._tls = tls
        self._demand_window = demand_window
        self._framing = framing
        self._size = size
        self._max_size = max_size
        self._keepalive = keepalive
        self._limits = limits
        self._metrics = metrics
        self._health = health
        self._tasks = tasks
        self._pools: dict[str, TunnelPool] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._throttle = LogThrottle(log, interval=30.0)

    def _new(self, peer: PeerView) -> TunnelPool:
        pool = TunnelPool(peer, tls=self._tls, size=self._size, keepalive=self._keepalive, limits=self._limits,
                          metrics=self._metrics, health=self._health, throttle=self._throttle,
                          framing=self._framing, max_size=self._max_size,
                          demand_window=self._demand_window)
        self._pools[peer.name] = pool
        if self._size > 0:
            self._runners[peer.name] = self._tasks.spawn(pool.run(), name=f"tunnel-pool-{peer.name}", kind="pool")
        return pool

    def get(self, peer: PeerView) -> TunnelPool:
        """The pool of `peer` (made now if no Import needed it yet)."""
        pool = self._pools.get(peer.name)
        if pool is None:
            pool = self._new(peer)
        elif pool.peer != peer:
            pool.update(peer)
        return pool

    def reconcile(self, peers: Iterable[PeerView]) -> None:
        """Keep pools exactly for `peers` (a new snapshot)."""
        wanted = {p.name: p for p in peers}
        for name in list(self._pools):
            if name not in wanted:
                self._stop(name)
        for peer in wanted.values():
            self.get(peer)

    def _stop(self, name: str) -> None:
        pool = self._pools.pop(name)
        runner = self._runners.pop(name, None)
        if runner is not None:
            runner.cancel()
        pool.close()
        self._health.forget(name)

    def close(self) -> None:
        for name in list(self._pools):
            self._stop(name)

    def refresh_ages(self) -> None:
        now = time.monotonic()
        for pool in self._pools.values():
            pool.refresh_age(now)

    def certificates_changed(self) -> None:
        for pool in self._pools.values():
            pool.certificates_changed()
