"""The peer protocol's payload codecs: the /authz body, the labels header, bearer tokens."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.peerwire.codec import (
    AuthzRequest,
    WireError,
    bearer_token,
    connect_authority,
    decode_labels,
    encode_authz_request,
    encode_labels,
    parse_authz_request,
)

names = st.text(min_size=1, max_size=40)
attrs = st.dictionaries(st.text(max_size=30), st.text(max_size=30), max_size=8)


def test_body_uses_the_original_field_names() -> None:
    body = encode_authz_request(AuthzRequest("echo", "ns", {"peer.clusterlink.net/name": "east"}))
    assert json.loads(body) == {"ServiceName": "echo", "ServiceNamespace": "ns",
                                "SrcAttributes": {"peer.clusterlink.net/name": "east"}}


@given(names, names, attrs)
def test_authz_round_trip(name: str, namespace: str, src: dict[str, str]) -> None:
    parsed = parse_authz_request(encode_authz_request(AuthzRequest(name, namespace, src)))
    assert (parsed.service_name, parsed.service_namespace, dict(parsed.src_attributes)) == (name, namespace, src)


@pytest.mark.parametrize("body, message", [
    (b"", "not JSON"),
    (b"{", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[]", "must be a JSON object, not an array"),
    (b'"x"', "must be a JSON object, not a string"),
    (b'{"ServiceNamespace": "ns"}', "'ServiceName' is missing"),
    (b'{"ServiceName": "a"}', "'ServiceNamespace' is missing"),
    (b'{"ServiceName": 1, "ServiceNamespace": "ns"}', "'ServiceName' must be a string, not a number"),
    (b'{"ServiceName": "", "ServiceNamespace": "ns"}', "'ServiceName' must not be empty"),
    (b'{"ServiceName": "a", "ServiceNamespace": null}', "must be a string, not null"),
    (b'{"ServiceName": "a", "ServiceNamespace": "ns", "SrcAttributes": []}', "'SrcAttributes' must be an object"),
    (b'{"ServiceName": "a", "ServiceNamespace": "ns", "SrcAttributes": {"k": 1}}', "SrcAttributes['k']"),
    (b"[" * 60000, "nested too deeply"),
])
def test_authz_parse_errors_are_clear_400s(body: bytes, message: str) -> None:
    with pytest.raises(WireError) as err:
        parse_authz_request(body)
    assert err.value.status == 400
    assert message in str(err.value)


def test_authz_body_too_large_is_413() -> None:
    with pytest.raises(WireError) as err:
        parse_authz_request(b" " * (64 * 1024 + 1))
    assert err.value.status == 413


def test_nil_attributes_and_unknown_fields_are_accepted() -> None:
    parsed = parse_authz_request(b'{"ServiceName": "a", "ServiceNamespace": "b", "SrcAttributes": null, "New": 1}')
    assert parsed.src_attributes == {}


@given(st.binary(max_size=300))
def test_authz_parser_only_raises_wire_error(body: bytes) -> None:
    try:
        parse_authz_request(body)
    except WireError as exc:
        assert exc.status in (400, 413)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children,
                                                                                     max_size=4),
                    max_leaves=20))
def test_authz_parser_on_any_json(doc: object) -> None:
    try:
        parsed = parse_authz_request(json.dumps(doc).encode())
    except WireError:
        return
    assert isinstance(parsed.service_name, str) and parsed.service_name
    assert all(isinstance(v, str) for v in parsed.src_attributes.values())


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=10))
def test_labels_round_trip(labels: dict[str, str]) -> None:
    assert decode_labels(encode_labels(labels)) == labels


def test_labels_header_is_base64_json() -> None:
    value = encode_labels({"cluster": "west"})
    assert json.loads(base64.b64decode(value)) == {"cluster": "west"}


@pytest.mark.parametrize("value", [None, "", b"", "  ", base64.b64encode(b"null").decode()])
def test_absent_labels_are_empty(value: object) -> None:
    assert decode_labels(value) == {}  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"[1]").decode(),
                                   base64.b64encode(b'{"a": 1}').decode(), base64.b64encode(b"{").decode(),
                                   "é", "A" * 20000])
def test_bad_labels_raise(value: str) -> None:
    with pytest.raises(WireError):
        decode_labels(value)


@given(st.text(max_size=100))
def test_labels_decoder_only_raises_wire_error(value: str) -> None:
    try:
        decode_labels(value)
    except WireError:
        pass


@pytest.mark.parametrize("header, token", [
    ("Bearer abc", "abc"), ("bearer abc ", "abc"), ("Bearer", None), ("Basic abc", None), (None, None), ("", None),
])
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_connect_authority() -> None:
    assert connect_authority("west") == "west:443"
