"""The gRPC client of the control plane's API, used by gateways, agents and the CLI.

It speaks gRPC through `grpcwire` (HTTP/2 on asyncio), not grpcio: the gateways and agents stay
about 12 MB smaller (grpcio is only in the control plane's server). `SnapshotFeed` keeps a
subscription alive: it reconnects with capped exponential backoff and hands each new snapshot to a
callback; the caller keeps serving its last snapshot while the control plane is away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import clusterlink_pb2 as pb
from .grpcwire import Channel, RPCError, tls_context

log = logging.getLogger(__name__)

ACK_TIMEOUT = 5.0  # seconds for one snapshot acknowledgement
KEEPALIVE = 10.0  # seconds between pings on an idle connection
KEEPALIVE_TIMEOUT = 5.0  # seconds a ping may go unanswered before the connection counts as dead



def _paths(service: str) -> dict[str, str]:
    """The HTTP/2 paths of a service's methods (`/clusterlink.v1.ControlPlane/Watch`), from the
    generated descriptor: the proto stays the one place that names them."""
    desc = pb.DESCRIPTOR.services_by_name[service]
    return {name: f"/{desc.full_name}/{name}" for name in desc.methods_by_name}


_CONTROL_PLANE = _paths("ControlPlane")
_MANAGEMENT = _paths("Management")


class APIError(RuntimeError):
    """A call to the control plane failed; `code` is the gRPC status code name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Endpoint:
    """Where the control plane's API is and how to authenticate to it.

    address: `unix:/path` or `host:port`; TCP uses TLS verified against `ca_file` with
    `server_name` (the control plane's peer name); `token` is the bearer token.
    """

    address: str
    token: str
    ca_file: Path | None = None
    server_name: str = ""

    @property
    def is_unix(self) -> bool:
        return self.address.startswith("unix:")


def read_token(path: Path | str) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise APIError("UNAUTHENTICATED", f"cannot read the token file {path}: {exc.strerror}") from None
    if not token:
        raise APIError("UNAUTHENTICATED", f"the token file {path} is empty")
    return token


def _channel(endpoint: Endpoint) -> Channel:
    ctx = None
    if not endpoint.is_unix:  # TCP is always TLS: against the CA file, or the system's CAs (as grpc did)
        ctx = _tls(endpoint.ca_file) if endpoint.ca_file else tls_context(None)
    return Channel(endpoint.address, ssl_context=ctx, server_name=endpoint.server_name, keepalive=KEEPALIVE,
                   keepalive_timeout=KEEPALIVE_TIMEOUT)


def _tls(path: Path) -> ssl.SSLContext:
    """A TLS context trusting the CA bundle, checked here so that a bad file has a clear error."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise APIError("INVALID_ARGUMENT", f"cannot read the CA file {path}: {exc.strerror or exc}") from None
    try:
        return tls_context(data.decode("ascii", errors="replace"))
    except ValueError:
        raise APIError("INVALID_ARGUMENT", f"the CA file {path} holds no PEM certificate") from None


def _metadata(endpoint: Endpoint) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {endpoint.token}"),)


def _translate(exc: RPCError) -> APIError:
    return APIError(exc.code, exc.details or "control plane call failed")


async def _unary(channel: Channel, endpoint: Endpoint, path: str, request: Any, reply: type, timeout: float) -> Any:
    """One unary call; APIError on failure (also for an answer that does not parse)."""
    try:
        data = await channel.unary(path, request.SerializeToString(), metadata=_metadata(endpoint), timeout=timeout)
    except RPCError as exc:
        raise _translate(exc) from None
    try:
        return reply.FromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise APIError("INTERNAL", f"undecodable answer to {path}: {exc}") from None


@dataclass(frozen=True)
class Rollout:
    """Where a management change stands on the control plane's gateways and agents."""

    waited: bool
    complete: bool
    confirmed: int = 0
    pending: tuple[str, ...] = ()
    silent: int = 0
    gateway_version: int = 0

    @classmethod
    def from_pb(cls, msg: pb.Rollout) -> Rollout:
        return cls(waited=msg.waited, complete=msg.complete, confirmed=msg.confirmed, pending=tuple(msg.pending),
                   silent=msg.silent, gateway_version=msg.gateway_version)


@dataclass(frozen=True)
class Applied:
    results: list[str]
    rollout: Rollout


class ControlPlaneClient:
    """Unary calls (Register, management) on one channel. Use as an async context manager."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel: Channel | None = None

    async def __aenter__(self) -> ControlPlaneClient:
        self._channel = _channel(self.endpoint)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _call(self, path: str, request: Any, reply: type, *, extra_time: float = 0.0) -> Any:
        if self._channel is None:
            raise RuntimeError("ControlPlaneClient used outside `async with`")
        return await _unary(self._channel, self.endpoint, path, request, reply, self.timeout + extra_time)

    async def register(self, node: str) -> pb.RegisterResponse:
        return await self._call(_CONTROL_PLANE["Register"], pb.RegisterRequest(node=node), pb.RegisterResponse)

    async def apply(self, yaml_text: str, *, wait: float = 0.0) -> Applied:
        """Store the objects; with `wait` > 0 the answer comes once the change is in force on the
        gateways and agents (or `wait` seconds passed: see `Applied.rollout`)."""
        resp = await self._call(_MANAGEMENT["Apply"], pb.ApplyRequest(yaml=yaml_text, wait_seconds=wait),
                                pb.ApplyResponse, extra_time=wait)
        return Applied(list(resp.results), Rollout.from_pb(resp.rollout))

    async def status(self) -> dict:
        """This peer as its control plane sees it (see controlplane.server.status)."""
        import json

        resp = await self._call(_MANAGEMENT["Status"], pb.StatusRequest(), pb.StatusResponse)
        return json.loads(resp.status_json)

    async def get(self, kind: str, namespace: str = "", name: str = "") -> str:
        resp = await self._call(_MANAGEMENT["Get"], pb.GetRequest(kind=kind, namespace=namespace, name=name),
                                pb.GetResponse)
        return resp.objects_json

    async def delete(self, kind: str, namespace: str, name: str, *, wait: float = 0.0) -> Rollout:
        """Delete one object (APIError NOT_FOUND if it does not exist); `wait` as in `apply`."""
        resp = await self._call(_MANAGEMENT["Delete"],
                                pb.DeleteRequest(kind=kind, namespace=namespace, name=name, wait_seconds=wait),
                                pb.DeleteResponse, extra_time=wait)
        return Rollout.from_pb(resp.rollout)


SnapshotCallback = Callable[[pb.Snapshot], Awaitable[None] | None]
StateCallback = Callable[[bool], None]


class SnapshotFeed:
    """Keeps a Watch stream open and delivers snapshots; reconnects with backoff forever.

    `on_snapshot` gets each new snapshot (a later version than the last one delivered);
    `on_connected(True/False)` reports the stream's state (for metrics and readiness).
    """

    def __init__(self, endpoint: Endpoint, *, role: str, node: str = "", on_snapshot: SnapshotCallback,
                 on_connected: StateCallback | None = None, min_backoff: float = 0.2, max_backoff: float = 5.0,
                 name: str = "", acknowledge: bool = True) -> None:
        if role not in ("gateway", "agent"):
            raise ValueError(f"role must be gateway or agent, not {role!r}")
        self.endpoint = endpoint
        self.role = role
        self.node = node
        self._on_snapshot = on_snapshot
        self._on_connected = on_connected
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self.version = 0
        self.connected = False
        self.last_error: str = ""
        # Acks: once `on_snapshot` returned, the snapshot is in force; the control plane's Apply and
        # Delete wait for that. `name` says who we are in their "not yet in force" messages.
        self.name = name or f"{role} {node or socket.gethostname()} pid {os.getpid()}"
        self._acknowledge = acknowledge
        self._streams = 0
        self._open: Channel | None = None  # while a stream is open: for `report`
        self._reports = True  # false once the control plane said it does not take reports

    def _set_connected(self, value: bool) -> None:
        if value != self.connected:
            self.connected = value
            if self._on_connected:
                self._on_connected(value)

    async def run(self) -> None:
        """Run until cancelled."""
        backoff = self._min_backoff
        while True:
            try:
                channel = _channel(self.endpoint)
            except APIError as exc:  # e.g. the CA file: it may be mounted or fixed later
                if exc.message != self.last_error:
                    log.error("cannot connect to the control plane at %s: %s", self.endpoint.address, exc.message)
                self.last_error = exc.message
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self._max_backoff)
                continue
            self._streams += 1
            instance = f"{self.name} stream {self._streams}" if self._acknowledge else ""
            try:
                request = pb.WatchRequest(role=self.role, node=self.node, known_version=self.version,
                                          instance=instance)
                call = channel.stream(_CONTROL_PLANE["Watch"], request.SerializeToString(),
                                      metadata=_metadata(self.endpoint))
                await call.accepted()  # the server sends its headers once the stream is accepted
                self._set_connected(True)
                self._open = channel
                async for data in call:
                    try:
                        snap = pb.Snapshot.FromString(data)
                    except Exception as exc:  # protobuf's DecodeError: the stream cannot be trusted further
                        raise RPCError("INTERNAL", f"undecodable snapshot: {exc}") from None
                    self._set_connected(True)
                    backoff = self._min_backoff
                    if snap.version == self.version:
                        continue
                    self.version = snap.version
                    result = self._on_snapshot(snap)
                    if asyncio.iscoroutine(result):
                        await result
                    if instance and self._acknowledge:
                        await self._ack(channel, instance, snap.version)
                self.last_error = "stream ended"
            except RPCError as exc:
                self.last_error = f"{exc.code}: {exc.details}"
                if exc.code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
                    log.error("control plane %s refused the %s's credentials: %s", self.endpoint.address,
                              self.role, exc.details)
                else:
                    log.debug("snapshot stream from %s broke: %s", self.endpoint.address, self.last_error)
            finally:
                self._open = None
                self._set_connected(False)
                await channel.close()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, self._max_backoff)

    async def report(self, denials: Sequence[pb.Denial]) -> bool:
        """Send policy denials on the open stream's channel; False when none is open, the call
        failed, or the control plane does not take reports (older: then never again)."""
        channel = self._open
        if channel is None or not self._reports or not denials:
            return False
        try:
            await _unary(channel, self.endpoint, _CONTROL_PLANE["Report"],
                         pb.ReportRequest(instance=self.name, denials=list(denials)), pb.ReportResponse, ACK_TIMEOUT)
        except APIError as exc:
            if exc.code == "UNIMPLEMENTED":
                log.info("the control plane at %s does not take denial reports", self.endpoint.address)
                self._reports = False
            else:
                log.debug("reporting %d denials failed: %s", len(denials), exc.message)
            return False
        return True

    async def _ack(self, channel: Channel, instance: str, version: int) -> None:
        try:
            await _unary(channel, self.endpoint, _CONTROL_PLANE["Ack"],
                         pb.AckRequest(instance=instance, version=version), pb.AckResponse, ACK_TIMEOUT)
        except APIError as exc:
            if exc.code == "UNIMPLEMENTED":  # an older control plane: it cannot wait for us
                log.info("the control plane at %s does not take acknowledgements", self.endpoint.address)
                self._acknowledge = False
            else:  # the stream is probably breaking too; the next stream starts from what we hold
                log.debug("acknowledging snapshot %d failed: %s", version, exc.message)
