"""A control-plane snapshot turned into the gateway's immutable lookup tables (pure).

`build_state(snapshot, ...)` makes a `GatewayState`: remote peers by name, local exports by
(namespace, name), imports by (namespace, name) and by target port, the policy engine loaded with
the snapshot's policies, and the token authority made from the snapshot's key. A worker swaps
its whole state at once when a new snapshot arrives; every connection reads one state for all
its decisions. Nothing in a snapshot makes building fail: what cannot be used (a policy that does
not parse, an unknown load-balancing scheme, a missing token key) is left out or defaulted and
listed in `problems`, for the worker to log.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from controlplane.api import clusterlink_pb2 as pb
from controlplane.api.protocols import carried
from controlplane.policy.engine import PolicyEngine
from controlplane.policy.policy import Policy, PolicyError, parse_policy_spec
from controlplane.tokens import MIN_KEY_BYTES, TokenAuthority

from .lb import DEFAULT_SCHEME, normalize_scheme

_EMPTY: Mapping[str, str] = MappingProxyType({})
_TCP = frozenset({"TCP"})


@dataclass(frozen=True)
class PeerView:
    name: str
    gateways: tuple[tuple[str, int], ...]
    reachable: bool
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class ExportView:
    namespace: str
    name: str
    host: str
    port: int
    valid: bool
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    protocols: frozenset[str] = _TCP  # "TCP", "UDP" (spec.protocol)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class SourceView:
    peer: str
    export_namespace: str
    export_name: str


@dataclass(frozen=True)
class ImportView:
    namespace: str
    name: str
    port: int
    target_port: int
    lb_scheme: str
    sources: tuple[SourceView, ...]
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    protocols: frozenset[str] = _TCP  # "TCP", "UDP" (spec.protocol)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class GatewayState:
    version: int
    peer_name: str
    peer_labels: Mapping[str, str]
    peers: Mapping[str, PeerView]
    exports: Mapping[tuple[str, str], ExportView]
    imports: Mapping[tuple[str, str], ImportView]
    imports_by_port: Mapping[int, ImportView]
    engine: PolicyEngine
    authority: TokenAuthority | None
    policies_digest: tuple[tuple[bool, str, str, str], ...] = ()
    token_key: bytes = field(default=b"", repr=False)
    problems: tuple[str, ...] = ()


def _labels(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping)) if mapping else _EMPTY


def _parse_policies(infos, problems: list[str]) -> list[Policy]:  # type: ignore[no-untyped-def]
    policies = []
    for info in infos:
        what = (f"PrivilegedAccessPolicy {info.name}" if info.privileged
                else f"AccessPolicy {info.namespace}/{info.name}")
        try:
            spec = json.loads(info.spec_json)
            policies.append(parse_policy_spec(spec, name=info.name, namespace=info.namespace,
                                              privileged=info.privileged))
        except json.JSONDecodeError as exc:
            problems.append(f"{what} is left out: its spec is not JSON ({exc.msg})")
        except PolicyError as exc:
            problems.append(f"{what} is left out: {exc}")
    return policies


def build_state(snapshot: pb.Snapshot, *, local_peer: str, token_lifetime: float,
                previous: GatewayState | None = None) -> GatewayState:
    """The state of `snapshot` for the gateway of `local_peer` (our certificate's name).

    The policy engine of `previous` is reused when the policies did not change (it keeps its
    decision cache); so is its token authority when the key did not change.
    """
    problems: list[str] = []
    if snapshot.peer_name and snapshot.peer_name != local_peer:
        problems.append(f"the snapshot is for peer {snapshot.peer_name!r} but our certificate is for "
                        f"{local_peer!r}; serving as {local_peer!r}")

    peers = {}
    for p in snapshot.peers:
        peers[p.name] = PeerView(name=p.name, gateways=tuple((g.host, int(g.port)) for g in p.gateways),
                                 reachable=p.reachable, labels=_labels(p.labels))

    exports = {}
    for e in snapshot.exports:
        protocols = _protocols("Export", e, problems)
        view = ExportView(namespace=e.namespace, name=e.name, host=e.target_host, port=int(e.port),
                          valid=e.valid and bool(e.target_host) and 0 < e.port < 65536 and bool(protocols),
                          labels=_labels(e.labels), protocols=protocols)
        exports[view.key] = view

    imports = {}
    by_port: dict[int, ImportView] = {}
    for i in snapshot.imports:
        try:
            scheme = normalize_scheme(i.lb_scheme)
        except ValueError as exc:
            problems.append(f"Import {i.namespace}/{i.name}: {exc}; using {DEFAULT_SCHEME}")
            scheme = DEFAULT_SCHEME
        view = ImportView(namespace=i.namespace, name=i.name, port=int(i.port), target_port=int(i.target_port),
                          lb_scheme=scheme,
                          sources=tuple(SourceView(s.peer, s.export_namespace, s.export_name) for s in i.sources),
                          labels=_labels(i.labels), protocols=_protocols("Import", i, problems))
        imports[view.key] = view
        if view.target_port:
            other = by_port.get(view.target_port)
            if other is not None:
                problems.append(f"Imports {other.ref} and {view.ref} both have target port {view.target_port}; "
                                f"the port serves {other.ref}")
            else:
                by_port[view.target_port] = view

    digest = tuple(sorted((p.privileged, p.namespace, p.name, p.spec_json) for p in snapshot.policies))
    if previous is not None and previous.policies_digest == digest:
        engine = previous.engine
    else:
        engine = PolicyEngine()
        engine.replace_all(_parse_policies(snapshot.policies, problems))

    key = bytes(snapshot.token_key)
    authority: TokenAuthority | None
    if previous is not None and previous.authority is not None and previous.token_key == key:
        authority = previous.authority
    elif len(key) < MIN_KEY_BYTES:
        authority = None
        problems.append(f"the snapshot's token key has {len(key)} bytes (at least {MIN_KEY_BYTES} needed): "
                        "access tokens and agent credentials cannot be issued or checked")
    else:
        authority = TokenAuthority(key, local_peer, access_lifetime=token_lifetime)

    return GatewayState(
        version=int(snapshot.version),
        peer_name=local_peer,
        peer_labels=_labels(snapshot.peer_labels),
        peers=MappingProxyType(peers),
        exports=MappingProxyType(exports),
        imports=MappingProxyType(imports),
        imports_by_port=MappingProxyType(by_port),
        engine=engine,
        authority=authority,
        policies_digest=digest,
        token_key=key,
        problems=tuple(problems),
    )


def _protocols(kind: str, info: pb.ExportInfo | pb.ImportInfo, problems: list[str]) -> frozenset[str]:
    """The protocols of an Export or Import; empty (nothing is carried) for a value this gateway
    does not know (a newer control plane), listed in `problems`."""
    try:
        return carried(info.protocol)
    except ValueError as exc:
        problems.append(f"{kind} {info.namespace}/{info.name}: {exc}; it carries nothing")
        return frozenset()
