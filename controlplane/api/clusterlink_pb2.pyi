from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Gateway(_message.Message):
    __slots__ = ("host", "port")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    host: str
    port: int
    def __init__(self, host: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class PeerInfo(_message.Message):
    __slots__ = ("name", "gateways", "reachable", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    gateways: _containers.RepeatedCompositeFieldContainer[Gateway]
    reachable: bool
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., gateways: _Optional[_Iterable[_Union[Gateway, _Mapping]]] = ..., reachable: _Optional[bool] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ExportInfo(_message.Message):
    __slots__ = ("namespace", "name", "target_host", "port", "labels", "valid", "protocol")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_HOST_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    target_host: str
    port: int
    labels: _containers.ScalarMap[str, str]
    valid: bool
    protocol: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., target_host: _Optional[str] = ..., port: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., valid: _Optional[bool] = ..., protocol: _Optional[str] = ...) -> None: ...

class ImportSource(_message.Message):
    __slots__ = ("peer", "export_name", "export_namespace")
    PEER_FIELD_NUMBER: _ClassVar[int]
    EXPORT_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPORT_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    peer: str
    export_name: str
    export_namespace: str
    def __init__(self, peer: _Optional[str] = ..., export_name: _Optional[str] = ..., export_namespace: _Optional[str] = ...) -> None: ...

class ImportInfo(_message.Message):
    __slots__ = ("namespace", "name", "port", "target_port", "vip", "lb_scheme", "sources", "labels", "protocol")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_FIELD_NUMBER: _ClassVar[int]
    VIP_FIELD_NUMBER: _ClassVar[int]
    LB_SCHEME_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    port: int
    target_port: int
    vip: str
    lb_scheme: str
    sources: _containers.RepeatedCompositeFieldContainer[ImportSource]
    labels: _containers.ScalarMap[str, str]
    protocol: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., port: _Optional[int] = ..., target_port: _Optional[int] = ..., vip: _Optional[str] = ..., lb_scheme: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[ImportSource, _Mapping]]] = ..., labels: _Optional[_Mapping[str, str]] = ..., protocol: _Optional[str] = ...) -> None: ...

class PolicyInfo(_message.Message):
    __slots__ = ("privileged", "namespace", "name", "spec_json")
    PRIVILEGED_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    privileged: bool
    namespace: str
    name: str
    spec_json: str
    def __init__(self, privileged: _Optional[bool] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., spec_json: _Optional[str] = ...) -> None: ...

class WorkloadInfo(_message.Message):
    __slots__ = ("cgroup", "namespace", "name", "service_account", "labels", "node")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    cgroup: str
    namespace: str
    name: str
    service_account: str
    labels: _containers.ScalarMap[str, str]
    node: str
    def __init__(self, cgroup: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., service_account: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., node: _Optional[str] = ...) -> None: ...

class Snapshot(_message.Message):
    __slots__ = ("version", "peer_name", "peer_labels", "peers", "exports", "imports", "policies", "workloads", "token_key", "gateway_agent_address", "generated_unix_ms")
    class PeerLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PEER_NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_LABELS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    IMPORTS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_KEY_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_AGENT_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    version: int
    peer_name: str
    peer_labels: _containers.ScalarMap[str, str]
    peers: _containers.RepeatedCompositeFieldContainer[PeerInfo]
    exports: _containers.RepeatedCompositeFieldContainer[ExportInfo]
    imports: _containers.RepeatedCompositeFieldContainer[ImportInfo]
    policies: _containers.RepeatedCompositeFieldContainer[PolicyInfo]
    workloads: _containers.RepeatedCompositeFieldContainer[WorkloadInfo]
    token_key: bytes
    gateway_agent_address: str
    generated_unix_ms: int
    def __init__(self, version: _Optional[int] = ..., peer_name: _Optional[str] = ..., peer_labels: _Optional[_Mapping[str, str]] = ..., peers: _Optional[_Iterable[_Union[PeerInfo, _Mapping]]] = ..., exports: _Optional[_Iterable[_Union[ExportInfo, _Mapping]]] = ..., imports: _Optional[_Iterable[_Union[ImportInfo, _Mapping]]] = ..., policies: _Optional[_Iterable[_Union[PolicyInfo, _Mapping]]] = ..., workloads: _Optional[_Iterable[_Union[WorkloadInfo, _Mapping]]] = ..., token_key: _Optional[bytes] = ..., gateway_agent_address: _Optional[str] = ..., generated_unix_ms: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("role", "node", "known_version", "instance")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    role: str
    node: str
    known_version: int
    instance: str
    def __init__(self, role: _Optional[str] = ..., node: _Optional[str] = ..., known_version: _Optional[int] = ..., instance: _Optional[str] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("instance", "version")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    instance: str
    version: int
    def __init__(self, instance: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("waited", "complete", "confirmed", "pending", "gateway_version", "silent")
    WAITED_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SILENT_FIELD_NUMBER: _ClassVar[int]
    waited: bool
    complete: bool
    confirmed: int
    pending: _containers.RepeatedScalarFieldContainer[str]
    gateway_version: int
    silent: int
    def __init__(self, waited: _Optional[bool] = ..., complete: _Optional[bool] = ..., confirmed: _Optional[int] = ..., pending: _Optional[_Iterable[str]] = ..., gateway_version: _Optional[int] = ..., silent: _Optional[int] = ...) -> None: ...

class Denial(_message.Message):
    __slots__ = ("direction", "namespace", "name", "peer", "policy", "count")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    direction: str
    namespace: str
    name: str
    peer: str
    policy: str
    count: int
    def __init__(self, direction: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., peer: _Optional[str] = ..., policy: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("instance", "denials")
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    DENIALS_FIELD_NUMBER: _ClassVar[int]
    instance: str
    denials: _containers.RepeatedCompositeFieldContainer[Denial]
    def __init__(self, instance: _Optional[str] = ..., denials: _Optional[_Iterable[_Union[Denial, _Mapping]]] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("credential", "expires_unix")
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    credential: str
    expires_unix: int
    def __init__(self, credential: _Optional[str] = ..., expires_unix: _Optional[int] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("yaml", "wait_seconds")
    YAML_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    yaml: str
    wait_seconds: float
    def __init__(self, yaml: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("results", "rollout")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedScalarFieldContainer[str]
    rollout: Rollout
    def __init__(self, results: _Optional[_Iterable[str]] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("kind", "namespace", "name")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("objects_json",)
    OBJECTS_JSON_FIELD_NUMBER: _ClassVar[int]
    objects_json: str
    def __init__(self, objects_json: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("kind", "namespace", "name", "wait_seconds")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    namespace: str
    name: str
    wait_seconds: float
    def __init__(self, kind: _Optional[str] = ..., namespace: _Optional[str] = ..., name: _Optional[str] = ..., wait_seconds: _Optional[float] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted", "rollout")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    rollout: Rollout
    def __init__(self, deleted: _Optional[bool] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("status_json",)
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    status_json: str
    def __init__(self, status_json: _Optional[str] = ...) -> None: ...
