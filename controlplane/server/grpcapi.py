"""The control plane's gRPC services (grpc.aio): snapshots and registration for gateways and agents,
management calls for the CLI. The only module of the control-plane server that imports grpc.

Authentication: `authorization: Bearer <token>` metadata; the join token for components, the admin
token for management. Errors become gRPC status codes with messages that name the object.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from controlplane.api import clusterlink_pb2 as pb
from controlplane.api import clusterlink_pb2_grpc as pb_grpc
from controlplane.model import schema as S
from controlplane.model.objects import ModelError, Object, parse_documents
from controlplane.store.base import Store, StoreError
from controlplane.tokens import TokenAuthority

from .events import Events, NoEvents, ObjectRef, denial_note
from .reconciler import Reconciler
from .rollout import RolloutResult, Rollouts

log = logging.getLogger(__name__)

MAX_WAIT = 300.0  # seconds: the longest a management call waits for its change to be in force
MAX_DENIALS_PER_REPORT = 1024
RequestHook = Callable[[str, str], None]  # (method, code)
WatcherHook = Callable[[str, int], None]  # (role, delta)


@dataclass(frozen=True)
class Credentials:
    admin_token: str
    join_token: str


def _bearer(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer "):].strip()
    return ""


async def _require(context: grpc.aio.ServicerContext, *tokens: str) -> None:
    presented = _bearer(context)
    if not presented:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
    if not any(t and hmac.compare_digest(presented.encode(), t.encode()) for t in tokens):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "invalid token")


class ControlPlaneService(pb_grpc.ControlPlaneServicer):
    def __init__(self, reconciler: Reconciler, credentials: Credentials, authority: TokenAuthority, *,
                 credential_lifetime: float, on_watcher: WatcherHook | None = None,
                 on_request: RequestHook | None = None, events: Events | None = None) -> None:
        self.reconciler = reconciler
        self._events: Events = events or NoEvents()
        self.credentials = credentials
        self.authority = authority
        self.credential_lifetime = credential_lifetime
        self._on_watcher = on_watcher
        self._on_request = on_request
        self.rollouts = Rollouts()

    async def rollout(self, timeout: float) -> RolloutResult:
        """After a store write: wait until the snapshots that carry it are in force on every
        acknowledging watcher, at most `timeout` seconds."""
        rec = self.reconciler
        start = time.monotonic()
        if not await rec.settled(timeout):
            return RolloutResult(waited=True, complete=False, confirmed=0, silent=0,
                                 pending=(f"the control plane has not published the change after {timeout:g} s "
                                          "(see its log: reconcile failing?)",))
        gateway = rec.publication.gateway
        gateway_version = gateway.version if gateway is not None else 0
        agents: dict[str, int] = {}

        def targets(role: str, node: str) -> int:
            if role == "gateway":
                return gateway_version
            if node not in agents:  # frozen at first sight: later changes are not this call's
                snap = rec.agent_snapshot(node)
                agents[node] = snap.version if snap is not None else 0
            return agents[node]

        return await self.rollouts.wait(targets, timeout - (time.monotonic() - start),
                                        gateway_version=gateway_version)

    async def Ack(self, request: pb.AckRequest, context: grpc.aio.ServicerContext) -> pb.AckResponse:
        await _require(context, self.credentials.join_token)
        return pb.AckResponse(known=self.rollouts.ack(request.instance, request.version))

    async def Report(self, request: pb.ReportRequest, context: grpc.aio.ServicerContext) -> pb.ReportResponse:
        """A gateway's policy denials: Events on the Imports and Exports they were for (only
        objects and peers that exist: what a gateway names cannot grow anything)."""
        await _require(context, self.credentials.join_token)
        store = self.reconciler.store
        system = self.reconciler.config.system_namespace
        for denial in request.denials[:MAX_DENIALS_PER_REPORT]:
            found = denial_note(denial.direction, denial.peer, denial.policy)
            if found is None or store.get(S.PEER.kind, system, denial.peer) is None:
                continue
            kind, note = found
            obj = store.get(kind, denial.namespace, denial.name)
            if obj is not None:
                self._events.record(ObjectRef.of(obj), note, count=denial.count)
        if self._on_request:
            self._on_request("Report", "OK")
        return pb.ReportResponse()

    async def Register(self, request: pb.RegisterRequest, context: grpc.aio.ServicerContext) -> pb.RegisterResponse:
        await _require(context, self.credentials.join_token)
        if not request.node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "register: node name is required")
        credential = self.authority.mint_agent_credential(request.node, lifetime=self.credential_lifetime)
        if self._on_request:
            self._on_request("Register", "OK")
        return pb.RegisterResponse(credential=credential, expires_unix=int(time.time() + self.credential_lifetime))

    async def Watch(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext):  # type: ignore[override]
        await _require(context, self.credentials.join_token)
        role = request.role
        if role not in ("gateway", "agent"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"watch: unknown role {role!r} (gateway, agent)")
        if role == "agent" and not request.node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "watch: agents must name their node")
        rec = self.reconciler
        # Tell the client the stream is up now: when it already holds the current version, the
        # first snapshot message may be a long time away.
        await context.send_initial_metadata((("clusterlink-watch", "open"),))
        if role == "agent":
            rec.add_agent(request.node)
        if self._on_watcher:
            self._on_watcher(role, 1)
        acknowledged = self.rollouts.open(request.instance, role, request.node, request.known_version)
        try:
            sent = request.known_version
            serial = rec.publication.serial
            while True:
                snap = rec.publication.gateway if role == "gateway" else rec.agent_snapshot(request.node)
                if snap is not None and snap.version != sent:
                    yield snap
                    sent = snap.version
                serial = await rec.wait_changed(serial)
        finally:
            self.rollouts.close(request.instance, acknowledged)
            if role == "agent":
                rec.remove_agent(request.node)
            if self._on_watcher:
                self._on_watcher(role, -1)


class ManagementService(pb_grpc.ManagementServicer):
    def __init__(self, store: Store, credentials: Credentials, *, system_namespace: str, standalone: bool,
                 rollout: Callable[[float], Awaitable[RolloutResult]] | None = None,
                 status: Callable[[], dict] | None = None, on_request: RequestHook | None = None) -> None:
        self.store = store
        self._rollout = rollout
        self._status = status
        self.credentials = credentials
        self.system_namespace = system_namespace
        self.standalone = standalone
        self._on_request = on_request

    def _count(self, method: str, code: str) -> None:
        if self._on_request:
            self._on_request(method, code)

    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        await _require(context, self.credentials.admin_token)
        if self._status is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this control plane reports no status")
        self._count("Status", "OK")
        return pb.StatusResponse(status_json=json.dumps(self._status()))

    async def Apply(self, request: pb.ApplyRequest, context: grpc.aio.ServicerContext) -> pb.ApplyResponse:
        await _require(context, self.credentials.admin_token)
        try:
            objects = parse_documents(request.yaml, source="apply")
        except ModelError as exc:
            self._count("Apply", "INVALID_ARGUMENT")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        errors = self._server_checks(objects)
        if errors:
            self._count("Apply", "INVALID_ARGUMENT")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "\n".join(errors))
        results = []
        try:
            for obj in objects:
                old = self.store.get(obj.kind, obj.namespace, obj.name)
                new = self.store.apply(obj)
                verb = "created" if old is None else ("unchanged" if new.resource_version == old.resource_version
                                                      else "configured")
                results.append(f"{obj.kind.lower()}.{S.GROUP} {_name(obj)} {verb}")
        except StoreError as exc:
            self._count("Apply", "INTERNAL")
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        self._count("Apply", "OK")
        return pb.ApplyResponse(results=results, rollout=await self._wait(request.wait_seconds))

    async def _wait(self, seconds: float) -> pb.Rollout:
        if self._rollout is None or not seconds > 0:
            return pb.Rollout(waited=False)
        result = await self._rollout(min(seconds, MAX_WAIT))
        return pb.Rollout(waited=True, complete=result.complete, confirmed=result.confirmed,
                          pending=list(result.pending), gateway_version=result.gateway_version, silent=result.silent)

    def _server_checks(self, objects: list[Object]) -> list[str]:
        errors = []
        for obj in objects:
            if obj.kind == S.PEER.kind and obj.namespace != self.system_namespace:
                errors.append(f"{obj.key}: Peer objects belong in the ClusterLink namespace "
                              f"{self.system_namespace!r} (metadata.namespace)")
            if obj.info.standalone_only and not self.standalone:
                errors.append(f"{obj.key}: {obj.kind} exists only in standalone mode")
        return errors

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetResponse:
        await _require(context, self.credentials.admin_token)
        info = S.resolve_kind(request.kind)
        if info is None:
            self._count("Get", "INVALID_ARGUMENT")
            known = ", ".join(k.plural for k in S.ALL_KINDS)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown kind {request.kind!r} (known: {known})")
        if request.name:
            namespace = request.namespace if info.namespaced else ""
            obj = self.store.get(info.kind, namespace, request.name)
            if obj is None:
                self._count("Get", "NOT_FOUND")
                where = f"{namespace}/{request.name}" if namespace else request.name
                await context.abort(grpc.StatusCode.NOT_FOUND, f"{info.kind} {where} not found")
            objects = [obj]
        else:
            objects = [o for o in self.store.list(info.kind)
                       if not request.namespace or not info.namespaced or o.namespace == request.namespace]
        self._count("Get", "OK")
        return pb.GetResponse(objects_json=json.dumps([o.to_dict() for o in objects]))

    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        await _require(context, self.credentials.admin_token)
        info = S.resolve_kind(request.kind)
        if info is None:
            self._count("Delete", "INVALID_ARGUMENT")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown kind {request.kind!r}")
        namespace = request.namespace if info.namespaced else ""
        try:
            deleted = self.store.delete(info.kind, namespace, request.name)
        except StoreError as exc:
            self._count("Delete", "INTERNAL")
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        if not deleted:
            self._count("Delete", "NOT_FOUND")
            where = f"{namespace}/{request.name}" if namespace else request.name
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{info.kind} {where} not found")
        self._count("Delete", "OK")
        return pb.DeleteResponse(deleted=True, rollout=await self._wait(request.wait_seconds))


def _name(obj: Object) -> str:
    return f"{obj.namespace}/{obj.name}" if obj.namespace else obj.name


async def start_server(address: str, *, control: ControlPlaneService, management: ManagementService,
                       tls: tuple[bytes, bytes] | None = None) -> grpc.aio.Server:
    """Bind and start. `address`: `unix:/path` (plain; file mode 0600) or host:port (TLS required)."""
    server = grpc.aio.server(options=[("grpc.keepalive_permit_without_calls", 1),
                                      ("grpc.http2.min_ping_interval_without_data_ms", 5000)])
    pb_grpc.add_ControlPlaneServicer_to_server(control, server)
    pb_grpc.add_ManagementServicer_to_server(management, server)
    if address.startswith("unix:"):
        path = Path("/" + address[len("unix:"):].lstrip("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()  # a stale socket of a previous run
        server.add_insecure_port(f"unix:{path}")
        await server.start()
        os.chmod(path, 0o600)
    else:
        if tls is None:
            raise ValueError(f"API address {address} is TCP: it needs the peer certificate for TLS")
        key, cert = tls
        creds = grpc.ssl_server_credentials([(key, cert)])
        if server.add_secure_port(address, creds) == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
    log.info("control-plane API listening on %s", address)
    return server


async def stop_server(server: grpc.aio.Server, grace: float = 1.0) -> None:
    await asyncio.shield(server.stop(grace))
