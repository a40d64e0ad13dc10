"""Denials reported by gateways become Events on the Import or Export (through the real
ControlPlane.Report handler and the Events writer, on the wrapper fake), only for objects and
peers that exist; a report without the join token is refused."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from controlplane.api import clusterlink_pb2 as pb
from controlplane.gateway.denials import DenialReports
from controlplane.model.objects import parse_documents
from controlplane.server import events as E
from controlplane.server.grpcapi import ControlPlaneService, Credentials
from controlplane.server.kube_events import KubeEvents
from controlplane.server.reconciler import Reconciler, ReconcilerConfig
from controlplane.store.sqlite import SQLiteStore
from controlplane.tokens import TokenAuthority
from tests.unit.kube.fakekube import FakeKube

SYSTEM = "clusterlink-system"
OBJECTS = """
apiVersion: clusterlink.net/v1alpha1
kind: Peer
metadata: {name: cl2, namespace: clusterlink-system}
spec: {gateways: [{host: 127.0.0.1, port: 9}]}
---
apiVersion: clusterlink.net/v1alpha1
kind: Import
metadata: {name: web, namespace: default}
spec: {port: 80, sources: [{peer: cl2, exportName: web, exportNamespace: default}]}
---
apiVersion: clusterlink.net/v1alpha1
kind: Export
metadata: {name: db, namespace: default}
spec: {port: 5432, host: db.example.com}
"""


class Aborted(Exception):
    pass


class Context:
    """The two things the handler asks of grpc's ServicerContext."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.code: grpc.StatusCode | None = None

    def invocation_metadata(self):  # type: ignore[no-untyped-def]
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise Aborted(details)


@pytest.fixture
def service(tmp_path):  # type: ignore[no-untyped-def]
    store = SQLiteStore(tmp_path / "state.db")
    for obj in parse_documents(OBJECTS):
        store.apply(obj)
    api = FakeKube()
    events = KubeEvents(api, fallback_namespace=SYSTEM, leading=lambda: True)
    reconciler = Reconciler(ReconcilerConfig(peer_name="cl1", peer_labels={}, system_namespace=SYSTEM,
                                             reserved_ports={}, vip_range="10.96.0.0/24", gateway_agent_address=""),
                            store, token_key=b"k" * 32)
    control = ControlPlaneService(reconciler, Credentials(admin_token="admin", join_token="join"),
                                  TokenAuthority(b"k" * 32, "cl1"), credential_lifetime=60.0, events=events)
    yield control, events, api
    store.close()


def _events(api: FakeKube) -> list[dict]:
    return [o for (plural, _, _), o in sorted(api.objects.items()) if plural == "events"]


def test_reported_denials_are_events_on_the_import_and_the_export(service) -> None:  # type: ignore[no-untyped-def]
    control, events, api = service
    reports = DenialReports()
    for _ in range(3):
        reports.add("egress", "default", "web", "cl2", "default/no-web")
    reports.add("ingress", "default", "db", "cl2", "<default deny>")
    reports.add("egress", "default", "no-such-import", "cl2", "p")  # not ours to name
    reports.add("egress", "default", "web", "no-such-peer", "p")
    reports.add("sideways", "default", "web", "cl2", "p")
    asyncio.run(control.Report(pb.ReportRequest(instance="gw", denials=reports.take()), Context("join")))
    events.drain()
    got = {(e["regarding"]["kind"], e["regarding"]["name"]): e for e in _events(api)}
    assert set(got) == {("Import", "web"), ("Export", "db")}
    web = got[("Import", "web")]
    assert web["reason"] == E.POLICY_DENIED and web["type"] == "Warning"
    assert "peer cl2" in web["note"] and "default/no-web" in web["note"]
    assert web["series"]["count"] == 3  # the gateway's count, in one Event
    assert "<default deny>" in got[("Export", "db")]["note"]


def test_a_report_needs_the_join_token(service) -> None:  # type: ignore[no-untyped-def]
    control, _, _ = service
    for token, code in (("", grpc.StatusCode.UNAUTHENTICATED), ("admin", grpc.StatusCode.PERMISSION_DENIED)):
        context = Context(token)
        with pytest.raises(Aborted):
            asyncio.run(control.Report(pb.ReportRequest(), context))
        assert context.code == code


def test_the_gateway_side_aggregates_and_is_bounded() -> None:
    reports = DenialReports(max_entries=2)
    for _ in range(5):
        reports.add("egress", "ns", "a", "p", "pol")
    reports.add("egress", "ns", "b", "p", "pol")
    reports.add("egress", "ns", "c", "p", "pol")  # a third key: dropped, counted
    batch = reports.take()
    assert sorted((d.name, d.count) for d in batch) == [("a", 5), ("b", 1)]
    assert reports.dropped == 1 and reports.take() == [] and len(reports) == 0
