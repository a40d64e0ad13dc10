"""spec.protocol of Exports and Imports: TCP (default, also when absent), UDP or TCPAndUDP."""

import pytest
import yaml

from controlplane.model import crdgen
from controlplane.model import schema as S
from controlplane.model.objects import ModelError, parse_documents

EXPORT = "kind: Export\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: x}\nspec: {port: 53%s}\n"
IMPORT = ("kind: Import\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: x}\n"
          "spec: {port: 53, sources: [{peer: a, exportName: b, exportNamespace: c}]%s}\n")


def test_constants():
    assert (S.PROTOCOL_TCP, S.PROTOCOL_UDP, S.PROTOCOL_BOTH) == ("TCP", "UDP", "TCPAndUDP")
    assert S.PROTOCOLS == ("TCP", "UDP", "TCPAndUDP")


@pytest.mark.parametrize("value, want", [
    (None, {"TCP"}), ("", {"TCP"}), ("TCP", {"TCP"}), ("UDP", {"UDP"}), ("TCPAndUDP", {"TCP", "UDP"}),
])
def test_carried(value, want):
    got = S.carried(value)
    assert isinstance(got, frozenset) and got == frozenset(want)


@pytest.mark.parametrize("value", ["udp", "SCTP", "TCP,UDP", "Both"])
def test_carried_rejects_other_values(value):
    with pytest.raises(ValueError, match=f"unsupported protocol {value!r}"):
        S.carried(value)


@pytest.mark.parametrize("template", [EXPORT, IMPORT], ids=["Export", "Import"])
def test_absent_protocol_is_tcp(template):
    (obj,) = parse_documents(template % "")
    assert obj.spec["protocol"] == "TCP"


@pytest.mark.parametrize("template", [EXPORT, IMPORT], ids=["Export", "Import"])
@pytest.mark.parametrize("value", S.PROTOCOLS)
def test_every_protocol_is_accepted(template, value):
    (obj,) = parse_documents(template % f", protocol: {value}")
    assert obj.spec["protocol"] == value


@pytest.mark.parametrize("template", [EXPORT, IMPORT], ids=["Export", "Import"])
@pytest.mark.parametrize("value, message", [
    ("SCTP", "spec.protocol: unsupported value 'SCTP' (supported: TCP, UDP, TCPAndUDP)"),
    ("udp", "spec.protocol: unsupported value 'udp' (supported: TCP, UDP, TCPAndUDP)"),
    ("7", "spec.protocol: must be a string, not integer (7)"),
])
def test_other_protocols_are_rejected_naming_the_field(template, value, message):
    with pytest.raises(ModelError) as err:
        parse_documents(template % f", protocol: {value}", source="f.yaml")
    assert message in str(err.value)


@pytest.mark.parametrize("info", [S.EXPORT, S.IMPORT], ids=lambda i: i.kind)
def test_crd_declares_the_protocol_enum_default_and_column(info):
    crd = yaml.safe_load(crdgen.render()[crdgen.file_name(info)])
    (version,) = crd["spec"]["versions"]
    prop = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["protocol"]
    assert prop["type"] == "string" and prop["enum"] == ["TCP", "UDP", "TCPAndUDP"] and prop["default"] == "TCP"
    assert prop["description"].startswith("Transport protocol carried: TCP (default), UDP, or TCPAndUDP")
    assert "protocol" not in version["schema"]["openAPIV3Schema"]["properties"]["spec"].get("required", [])
    assert {"name": "Protocol", "type": "string", "jsonPath": ".spec.protocol"} in version["additionalPrinterColumns"]
