"""The agent's view of a snapshot, as pure data: what to redirect and who is who.

`NodeTable.from_snapshot` turns the control plane's agent snapshot into (a) the desired BPF
services map (TCP VIP:port → this node's proxy; UDP VIP:ports, each to its own relay), (b) the
import behind each VIP:port, and (c) the
standalone workloads by cgroup path, with the longest-prefix lookup a pod's nested cgroups need.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controlplane.api import clusterlink_pb2 as pb
from controlplane.api.attributes import client_attributes
from controlplane.api.protocols import carried


_TCP = frozenset({"TCP"})


@dataclass(frozen=True)
class ImportRef:
    namespace: str
    name: str
    protocols: frozenset[str] = _TCP  # "TCP", "UDP": what the VIP:port carries


@dataclass(frozen=True)
class Workload:
    namespace: str
    name: str
    service_account: str
    labels: Mapping[str, str]

    def attributes(self) -> dict[str, str]:
        return client_attributes(self.namespace, self.service_account, self.labels)


def _parse_host_port(text: str) -> tuple[str, int] | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class NodeTable:
    version: int = 0
    imports: Mapping[tuple[str, int], ImportRef] = field(default_factory=dict)
    workloads: Mapping[str, Workload] = field(default_factory=dict)
    gateway: tuple[str, int] | None = None
    peer_name: str = ""

    @classmethod
    def from_snapshot(cls, snap: pb.Snapshot) -> NodeTable:
        imports: dict[tuple[str, int], ImportRef] = {}
        for imp in snap.imports:
            if imp.vip and imp.port:
                try:
                    protocols = carried(imp.protocol)
                except ValueError:
                    continue  # a protocol this agent does not know (a newer control plane): not redirected
                imports[(imp.vip, imp.port)] = ImportRef(imp.namespace, imp.name, protocols)
        workloads = {
            _normalise(w.cgroup): Workload(w.namespace, w.name, w.service_account or "default", dict(w.labels))
            for w in snap.workloads if w.cgroup
        }
        return cls(version=snap.version, imports=imports, workloads=workloads,
                   gateway=_parse_host_port(snap.gateway_agent_address), peer_name=snap.peer_name)

    def services(self, proxy: tuple[str, int]) -> dict[tuple[str, int], tuple[str, int]]:
        """The desired TCP entries of the BPF services map: every TCP import IPv4 VIP:port → the proxy."""
        return {key: proxy for key, ref in self.imports.items() if "TCP" in ref.protocols and ":" not in key[0]}

    def services6(self, proxy: tuple[str, int]) -> dict[tuple[str, int], tuple[str, int]]:
        """The IPv6 services map: every TCP import IPv6 VIP:port → the proxy (its IPv6 address, or
        its IPv4 one, reached v4-mapped)."""
        return {key: proxy for key, ref in self.imports.items() if "TCP" in ref.protocols and ":" in key[0]}

    def udp_services(self) -> list[tuple[str, int]]:
        """The import VIP:ports that carry UDP, IPv4 and IPv6 (each gets its own relay socket, an
        IPv4 one: a VIP6's is reached v4-mapped)."""
        return [key for key, ref in self.imports.items() if "UDP" in ref.protocols]

    def workload_for(self, cgroup_path: str) -> Workload | None:
        """The workload whose cgroup is `cgroup_path` or one of its ancestors (longest match)."""
        path = _normalise(cgroup_path)
        while True:
            found = self.workloads.get(path)
            if found is not None:
                return found
            if path in ("/", ""):
                return None
            path = path.rsplit("/", 1)[0] or "/"


def _normalise(path: str) -> str:
    path = "/" + path.strip("/")
    return path
