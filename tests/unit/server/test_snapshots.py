"""Snapshots carry spec.protocol of Exports and Imports (ExportInfo.protocol = 7, ImportInfo.protocol = 9)."""

import pytest

from controlplane.api import clusterlink_pb2 as pb
from controlplane.model.objects import parse_documents
from controlplane.server.exports import ExportTarget
from controlplane.server.snapshots import DesiredState, agent_view, gateway_view


def objects(protocol_line):
    return parse_documents(f"""
apiVersion: clusterlink.net/v1alpha1
kind: Export
metadata: {{name: dns, namespace: default}}
spec: {{port: 53{protocol_line}}}
---
apiVersion: clusterlink.net/v1alpha1
kind: Import
metadata: {{name: dns, namespace: default}}
spec: {{port: 53, sources: [{{peer: server1, exportName: dns, exportNamespace: default}}]{protocol_line}}}
""")


def state(protocol_line):
    export, imp = objects(protocol_line)
    return DesiredState(peer_name="client", peer_labels={}, system_namespace="clusterlink-system",
                        exports=[(export, ExportTarget(True, "10.0.0.53", "Verified", ""))], imports=[imp])


def test_field_numbers():
    assert pb.ExportInfo.DESCRIPTOR.fields_by_name["protocol"].number == 7
    assert pb.ImportInfo.DESCRIPTOR.fields_by_name["protocol"].number == 9


@pytest.mark.parametrize("line, want", [("", "TCP"), (", protocol: TCP", "TCP"), (", protocol: UDP", "UDP"),
                                        (", protocol: TCPAndUDP", "TCPAndUDP")])
def test_exports_and_imports_carry_the_protocol(line, want):
    s = state(line)
    view = gateway_view(s)
    (export,) = view.exports
    (imp,) = view.imports
    assert (export.protocol, imp.protocol) == (want, want)
    (agent_imp,) = agent_view(s, "node-1").imports
    assert agent_imp.protocol == want


def test_an_object_without_protocol_in_its_spec_is_tcp():
    export, imp = objects("")
    del export.spec["protocol"], imp.spec["protocol"]  # e.g. built by code, not parsed
    view = gateway_view(DesiredState(peer_name="client", peer_labels={}, system_namespace="clusterlink-system",
                                     exports=[(export, ExportTarget(True, "h", "", ""))], imports=[imp]))
    assert (view.exports[0].protocol, view.imports[0].protocol) == ("TCP", "TCP")
