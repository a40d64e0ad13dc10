"""The control plane's small wrapper around the Kubernetes API: the only module importing `kubernetes`.

Plain dicts in and out, for the few resources the control plane touches (the five ClusterLink
kinds, Services, EndpointSlices, gateway Pods, Leases, one Secret, Events, the MCS API's
ServiceExports and ServiceImports; CRDs and Namespaces for tests):
`list`, `watch`, `get`, `create`, `replace`, `patch` (JSON merge patch), `patch_status`, `delete`.
Every failure is translated once, here, into `KubeError` subclasses that say what to do next:

- `Gone` (410: the resourceVersion expired) → list again, then watch from the new version;
- `Conflict` (409; `AlreadyExists` is one) → re-read and retry, or treat as a lost race;
- `NotFound` (404);
- `TemporaryError` (5xx, 429, timeouts, connection failures) → retry after a delay;
- `PermanentError` (other 4xx: forbidden, invalid) → report; retrying the same call will not help.

Requests go through `ApiClient.call_api` with paths built from a `Resource`, so one code path
serves core, discovery, coordination and custom resources alike, without model classes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3.exceptions
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from controlplane.model import schema as S

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
DEFAULT_TIMEOUT = (5.0, 10.0)  # connect, read (seconds): writes run on the control plane's event loop
LIST_READ_TIMEOUT = 60.0  # lists (in reflector threads) may be large


# -- resources --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """REST path: all namespaces when `namespace` is None (namespaced kinds), one object with `name`."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{quote(namespace, safe='')}"
        elif self.namespaced and name is not None:
            raise ValueError(f"{self.kind} {name}: a namespaced object needs a namespace")
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
            if subresource:
                base += f"/{subresource}"
        return base

    def describe(self, namespace: str | None, name: str | None) -> str:
        where = f"{namespace}/{name}" if namespace and name else (name or namespace or "(all namespaces)")
        return f"{self.kind} {where}"


CLUSTERLINK: dict[str, Resource] = {
    info.kind: Resource(S.GROUP, S.VERSION, info.plural, info.kind, info.namespaced) for info in S.CRD_KINDS
}
SERVICES = Resource("", "v1", "services", "Service", True)
PODS = Resource("", "v1", "pods", "Pod", True)
SECRETS = Resource("", "v1", "secrets", "Secret", True)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False)
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", True)
EVENTS = Resource("events.k8s.io", "v1", "events", "Event", True)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)
# The Kubernetes Multi-Cluster Services API (KEP-1645, sigs.k8s.io/mcs-api), its released version.
MCS_GROUP = "multicluster.x-k8s.io"
MCS_VERSION = "v1alpha1"
SERVICE_EXPORTS = Resource(MCS_GROUP, MCS_VERSION, "serviceexports", "ServiceExport", True)
SERVICE_IMPORTS = Resource(MCS_GROUP, MCS_VERSION, "serviceimports", "ServiceImport", True)


# -- errors -----------------------------------------------------------------------------------------


class KubeError(Exception):
    """A Kubernetes API call failed. `temporary`: retrying later may succeed."""

    temporary = False

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class TemporaryError(KubeError):
    temporary = True


class PermanentError(KubeError):
    pass


class NotFound(PermanentError):
    pass


class Conflict(KubeError):
    temporary = True  # re-read and try again


class AlreadyExists(Conflict):
    pass


class Gone(KubeError):
    """The resourceVersion is too old (410): list again."""

    temporary = True


def _status_details(body: str | None) -> tuple[str, str]:
    """(reason, message) of a metav1.Status body, or ("", "")."""
    if not body:
        return "", ""
    try:
        doc = json.loads(body)
    except ValueError:
        return "", body.strip()[:300]
    if not isinstance(doc, dict):
        return "", ""
    return str(doc.get("reason") or ""), str(doc.get("message") or "")


def error_for_status(status: int, reason: str, message: str, what: str) -> KubeError:
    """The error class for an HTTP status (and metav1.Status reason) of a call about `what`."""
    text = f"{what}: {message or reason or 'HTTP ' + str(status)} ({status})"
    if status == 410:
        return Gone(text, status=status, reason=reason)
    if status == 409:
        cls = AlreadyExists if reason == "AlreadyExists" else Conflict
        return cls(text, status=status, reason=reason)
    if status == 404:
        return NotFound(text, status=status, reason=reason)
    if status == 429 or status >= 500 or status == 0:
        return TemporaryError(text, status=status, reason=reason)
    return PermanentError(text, status=status, reason=reason)


def translate(exc: BaseException, what: str) -> KubeError:
    """Translate an exception of the kubernetes client (or of urllib3 under it) into a KubeError."""
    if isinstance(exc, KubeError):
        return exc
    if isinstance(exc, ApiException):
        reason, message = _status_details(exc.body)
        return error_for_status(int(exc.status or 0), reason or str(exc.reason or ""), message, what)
    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, socket.timeout)):
        return TemporaryError(f"{what}: cannot reach the Kubernetes API: {exc}")
    if isinstance(exc, OSError):
        return TemporaryError(f"{what}: {exc}")
    if isinstance(exc, ValueError):  # undecodable response
        return TemporaryError(f"{what}: bad response from the Kubernetes API: {exc}")
    return PermanentError(f"{what}: {type(exc).__name__}: {exc}")


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectList:
    items: list[dict[str, Any]]
    resource_version: str


class WatchStream:
    """The events of one watch request: iterate for (type, object); `close()` from any thread.

    Types are ADDED, MODIFIED, DELETED and BOOKMARK (only the resourceVersion of a bookmark's
    object is meaningful). An ERROR event raises its translated error (410 → `Gone`). The
    iteration ends when the server closes the watch (its timeout) or after `close()`.
    """

    def __init__(self, response: Any, what: str) -> None:
        self._response = response  # urllib3.HTTPResponse, not preloaded
        self._what = what
        self._closed = False

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            for line in self._lines():
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError as exc:
                    raise TemporaryError(f"{self._what}: undecodable watch event: {exc}") from exc
                etype = event.get("type")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    reason, message = str(obj.get("reason") or ""), str(obj.get("message") or "")
                    raise error_for_status(int(obj.get("code") or 0), reason, message, self._what)
                yield str(etype), obj
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if self._closed:
                return
            raise translate(exc, self._what) from exc
        finally:
            self._release()

    def _lines(self) -> Iterator[str]:
        buffer = b""
        for chunk in self._response.stream(amt=None, decode_content=True):
            if self._closed:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield line.decode("utf-8", errors="replace")
        if buffer.strip() and not self._closed:
            yield buffer.decode("utf-8", errors="replace")

    def close(self) -> None:
        """Stop the watch; a thread blocked reading it wakes up and its iteration ends."""
        self._closed = True
        sock = getattr(getattr(self._response, "connection", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the peer: nothing left to wake
                pass

    def _release(self) -> None:
        try:
            self._response.close()
            self._response.release_conn()
        except OSError as exc:  # the connection is being discarded anyway
            log.debug("closing the watch of %s: %s", self._what, exc)


# -- the client -------------------------------------------------------------------------------------


def _query(**params: Any) -> list[tuple[str, str]]:
    out = []
    for key, value in params.items():
        if value is None or value == "":
            continue
        out.append((key, str(value).lower() if isinstance(value, bool) else str(value)))
    return out


class KubeAPI:
    """Calls to one Kubernetes API server. Thread-safe (urllib3 pools); `close()` when done."""

    def __init__(self, api_client: Any, *, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        self._client = api_client
        self._timeout = timeout

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, *, context: str | None = None) -> KubeAPI:
        """In-cluster configuration when running in a pod, else `kubeconfig` or $KUBECONFIG (~/.kube/config)."""
        configuration = k8s_client.Configuration()
        try:
            if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                k8s_config.load_incluster_config(client_configuration=configuration)
            else:
                k8s_config.load_kube_config(config_file=kubeconfig, context=context,
                                            client_configuration=configuration)
        except (k8s_config.ConfigException, OSError) as exc:
            raise PermanentError(f"no Kubernetes configuration (in-cluster, or KUBECONFIG): {exc}") from exc
        return cls(k8s_client.ApiClient(configuration))

    def close(self) -> None:
        self._client.close()

    # -- plumbing ---------------------------------------------------------------------------------
    def _request(self, method: str, path: str, what: str, *, query: list[tuple[str, str]] | None = None,
                 body: Any = None, content_type: str = "application/json", stream: bool = False,
                 timeout: tuple[float, float] | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            request = self._client.param_serialize(method=method, resource_path=path, query_params=query or [],
                                                   header_params=headers, body=body,
                                                   auth_settings=["BearerToken"])
            response = self._client.call_api(*request, _request_timeout=timeout or self._timeout)
            if not 200 <= response.status <= 299:
                response.read()
                raise ApiException.from_response(http_resp=response, body=response.data.decode("utf-8", "replace"),
                                                 data=None)
            if stream:
                return response.response
            data = response.read()
            return json.loads(data) if data else {}
        except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise translate(exc, what) from exc

    # -- reads ------------------------------------------------------------------------------------
    def list(self, resource: Resource, *, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> ObjectList:
        what = f"listing {resource.describe(namespace, None)}"
        doc = self._request("GET", resource.path(namespace), what,
                            query=_query(labelSelector=label_selector, fieldSelector=field_selector),
                            timeout=(self._timeout[0], max(self._timeout[1], LIST_READ_TIMEOUT)))
        items = []
        for item in doc.get("items") or []:
            # list items carry no apiVersion/kind; add them so every object looks the same
            items.append({"apiVersion": resource.api_version, "kind": resource.kind, **item})
        return ObjectList(items, str((doc.get("metadata") or {}).get("resourceVersion") or ""))

    def watch(self, resource: Resource, *, resource_version: str, namespace: str | None = None,
              label_selector: str | None = None, field_selector: str | None = None,
              timeout_seconds: int = 300) -> WatchStream:
        what = f"watching {resource.describe(namespace, None)}"
        response = self._request(
            "GET", resource.path(namespace), what, stream=True,
            query=_query(watch=True, resourceVersion=resource_version, allowWatchBookmarks=True,
                         timeoutSeconds=timeout_seconds, labelSelector=label_selector, fieldSelector=field_selector),
            timeout=(self._timeout[0], timeout_seconds + 30.0))
        return WatchStream(response, what)

    def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        return self._request("GET", resource.path(namespace, name), f"reading {resource.describe(namespace, name)}")

    # -- writes -----------------------------------------------------------------------------------
    def create(self, resource: Resource, namespace: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
        name = (body.get("metadata") or {}).get("name")
        return self._request("POST", resource.path(namespace), f"creating {resource.describe(namespace, name)}",
                             body=dict(body))

    def replace(self, resource: Resource, namespace: str | None, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: with metadata.resourceVersion set, fails with Conflict when the object changed."""
        return self._request("PUT", resource.path(namespace, name), f"replacing {resource.describe(namespace, name)}",
                             body=dict(body))

    def patch(self, resource: Resource, namespace: str | None, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """JSON merge patch (None deletes a key; lists are replaced whole)."""
        return self._request("PATCH", resource.path(namespace, name), f"patching {resource.describe(namespace, name)}",
                             body=dict(patch), content_type=MERGE_PATCH)

    def patch_status(self, resource: Resource, namespace: str | None, name: str,
                     status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource with `{"status": status}`."""
        return self._request("PATCH", resource.path(namespace, name, "status"),
                             f"writing the status of {resource.describe(namespace, name)}",
                             body={"status": dict(status)}, content_type=MERGE_PATCH)

    def delete(self, resource: Resource, namespace: str | None, name: str, *, uid: str | None = None) -> None:
        """Delete (background propagation); with `uid`, only that incarnation of the object."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        self._request("DELETE", resource.path(namespace, name), f"deleting {resource.describe(namespace, name)}",
                      body=body)
