"""The agent's small wrapper around the Kubernetes API: list and watch the pods of one node.

The only agent module importing `kubernetes` (the agent may not use the control plane's store, so
it has its own adapter, as narrow as it needs: pods, read-only). Dicts out; failures translated
into `PodAPIError` (`temporary` says whether to retry) and `Expired` (410: list again).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import urllib3.exceptions
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

PODS_PATH = "/api/v1/pods"


class PodAPIError(Exception):
    def __init__(self, message: str, *, temporary: bool, status: int = 0) -> None:
        super().__init__(message)
        self.temporary = temporary
        self.status = status


class Expired(PodAPIError):
    """The resourceVersion is too old (410 Gone): list again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=True, status=410)


def error_for_status(status: int, message: str, what: str) -> PodAPIError:
    text = f"{what}: {message or 'HTTP ' + str(status)} ({status})"
    if status == 410:
        return Expired(text)
    return PodAPIError(text, temporary=status in (0, 409, 429) or status >= 500, status=status)


def translate(exc: BaseException, what: str) -> PodAPIError:
    if isinstance(exc, PodAPIError):
        return exc
    if isinstance(exc, ApiException):
        message = ""
        try:
            message = str(json.loads(exc.body or "{}").get("message") or "")
        except ValueError:
            message = (exc.body or "").strip()[:300]
        return error_for_status(int(exc.status or 0), message or str(exc.reason or ""), what)
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return PodAPIError(f"{what}: cannot reach the Kubernetes API: {exc}", temporary=True)
    return PodAPIError(f"{what}: bad response from the Kubernetes API: {exc}", temporary=True)


class PodStream:
    """Watch events (type, pod dict); ERROR events raise; `close()` wakes a blocked reader."""

    def __init__(self, response: Any, what: str) -> None:
        self._response = response
        self._what = what
        self._closed = False

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        buffer = b""
        try:
            for chunk in self._response.stream(amt=None, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield self._event(line)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if not self._closed:
                raise translate(exc, self._what) from exc
        finally:
            self._response.release_conn()

    def _event(self, line: bytes) -> tuple[str, dict[str, Any]]:
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise PodAPIError(f"{self._what}: undecodable watch event: {exc}", temporary=True) from exc
        obj = event.get("object") or {}
        if event.get("type") == "ERROR":
            raise error_for_status(int(obj.get("code") or 0), str(obj.get("message") or ""), self._what)
        return str(event.get("type")), obj

    def close(self) -> None:
        self._closed = True
        sock = getattr(getattr(self._response, "connection", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed: nothing left to wake
                pass


class PodAPI:
    def __init__(self, api_client: Any, *, timeout: tuple[float, float] = (5.0, 30.0)) -> None:
        self._client = api_client
        self._timeout = timeout

    @classmethod
    def from_environment(cls) -> PodAPI:
        """In-cluster configuration (the agent's ServiceAccount), else $KUBECONFIG."""
        configuration = k8s_client.Configuration()
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST"):
                k8s_config.load_incluster_config(client_configuration=configuration)
            else:
                k8s_config.load_kube_config(client_configuration=configuration)
        except (k8s_config.ConfigException, OSError) as exc:
            raise PodAPIError(f"no Kubernetes configuration (in-cluster, or KUBECONFIG): {exc}",
                              temporary=False) from exc
        return cls(k8s_client.ApiClient(configuration))

    def _get(self, query: list[tuple[str, str]], what: str, *, stream: bool, read_timeout: float) -> Any:
        try:
            request = self._client.param_serialize(method="GET", resource_path=PODS_PATH, query_params=query,
                                                   header_params={"Accept": "application/json"},
                                                   auth_settings=["BearerToken"])
            response = self._client.call_api(*request, _request_timeout=(self._timeout[0], read_timeout))
            if not 200 <= response.status <= 299:
                response.read()
                raise ApiException.from_response(http_resp=response, body=response.data.decode("utf-8", "replace"),
                                                 data=None)
            return response.response if stream else json.loads(response.read() or b"{}")
        except (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise translate(exc, what) from exc

    def list_pods(self, field_selector: str) -> tuple[list[dict[str, Any]], str]:
        doc = self._get([("fieldSelector", field_selector)], f"listing pods ({field_selector})", stream=False,
                        read_timeout=self._timeout[1])
        return list(doc.get("items") or []), str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def watch_pods(self, field_selector: str, resource_version: str, timeout_seconds: int) -> PodStream:
        what = f"watching pods ({field_selector})"
        query = [("watch", "true"), ("fieldSelector", field_selector), ("resourceVersion", resource_version),
                 ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout_seconds))]
        return PodStream(self._get(query, what, stream=True, read_timeout=timeout_seconds + 30.0), what)

    def close(self) -> None:
        self._client.close()
