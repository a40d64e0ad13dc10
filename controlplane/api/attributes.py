"""Attribute keys of ClusterLink's access policies, and builders for the attribute maps.

Policies select on flat string maps. The keys are ClusterLink's own (kept identical so that
existing policies keep working); label keys are prefixed copies of the labels they come from.
"""

from __future__ import annotations

from collections.abc import Mapping

PEER_NAME = "peer.clusterlink.net/name"
PEER_LABELS = "peer.clusterlink.net/labels."
CLIENT_NAMESPACE = "client.clusterlink.net/namespace"
CLIENT_SERVICE_ACCOUNT = "client.clusterlink.net/service-account"
CLIENT_LABELS = "client.clusterlink.net/labels."
CLIENT_PREFIX = "client.clusterlink.net/"
EXPORT_NAME = "export.clusterlink.net/name"
EXPORT_NAMESPACE = "export.clusterlink.net/namespace"
EXPORT_LABELS = "export.clusterlink.net/labels."


def peer_attributes(name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """The attributes that describe a peer: its name and its labels."""
    attrs = {PEER_NAME: name}
    attrs.update({PEER_LABELS + k: v for k, v in labels.items()})
    return attrs


def client_attributes(namespace: str, service_account: str, labels: Mapping[str, str]) -> dict[str, str]:
    """The attributes of a client workload (a pod, or a standalone Workload)."""
    attrs: dict[str, str] = {}
    if namespace:
        attrs[CLIENT_NAMESPACE] = namespace
    if service_account:
        attrs[CLIENT_SERVICE_ACCOUNT] = service_account
    attrs.update({CLIENT_LABELS + k: v for k, v in labels.items()})
    return attrs


def export_attributes(namespace: str, name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """The attributes of an exported service (labels: Import's on egress, Export's on ingress)."""
    attrs = {EXPORT_NAME: name, EXPORT_NAMESPACE: namespace}
    attrs.update({EXPORT_LABELS + k: v for k, v in labels.items()})
    return attrs


def only_client(attrs: Mapping[str, str]) -> dict[str, str]:
    """The client.clusterlink.net/* part of an attribute map."""
    return {k: v for k, v in attrs.items() if k.startswith(CLIENT_PREFIX)}
