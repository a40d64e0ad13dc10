"""The two policy checks of a connection, pure: which attributes each side decides on.

Egress (on the client's peer, for every connection and every source tried): src = our peer name
and labels + the client's attributes; dst = the source's peer name and the labels we know of it
(heartbeats) + the export named by the source + the Import's labels; regular policies of the
Import's namespace apply.

Ingress (on the service's peer, at `/authz` and again at every `CONNECT`): src = the attributes
the remote peer sent, except `peer.clusterlink.net/name`, which is always the DNS SAN of the
certificate of the connection (a peer cannot claim to be another); dst = our peer name and labels
+ the Export's name, namespace and labels; regular policies of the Export's namespace apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from controlplane.api import attributes as A
from controlplane.policy.engine import Decision

from .state import ExportView, GatewayState, ImportView, PeerView, SourceView


@dataclass(frozen=True)
class Check:
    """A decision and the attributes it was made on."""

    decision: Decision
    src: Mapping[str, str]
    dst: Mapping[str, str]
    namespace: str


def egress_src(state: GatewayState, client: Mapping[str, str]) -> dict[str, str]:
    src = A.peer_attributes(state.peer_name, state.peer_labels)
    src.update(A.only_client(client))
    return src


def egress_check(state: GatewayState, imp: ImportView, source: SourceView, peer: PeerView,
                 src: Mapping[str, str]) -> Check:
    dst = A.peer_attributes(peer.name, peer.labels)
    dst.update(A.export_attributes(source.export_namespace, source.export_name, imp.labels))
    decision = state.engine.decide(src, dst, imp.namespace)
    return Check(decision, src, dst, imp.namespace)


def ingress_src(claimed: Mapping[str, str], presenting_peer: str) -> dict[str, str]:
    src = dict(claimed)
    src[A.PEER_NAME] = presenting_peer
    return src


def ingress_check(state: GatewayState, export: ExportView, claimed: Mapping[str, str],
                  presenting_peer: str) -> Check:
    src = ingress_src(claimed, presenting_peer)
    dst = A.peer_attributes(state.peer_name, state.peer_labels)
    dst.update(A.export_attributes(export.namespace, export.name, export.labels))
    decision = state.engine.decide(src, dst, export.namespace)
    return Check(decision, src, dst, export.namespace)
