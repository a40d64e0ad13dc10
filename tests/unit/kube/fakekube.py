"""An in-memory fake of `controlplane.store.kubeapi.KubeAPI` (the wrapper, not HTTP).

Objects live in a dict with API-server-like behaviour where the store depends on it: a global
resourceVersion counter, uids, ClusterIP allocation, generation bumps on spec changes, merge
patches with uid/resourceVersion preconditions, optimistic replace, AlreadyExists / NotFound.
Every write is recorded in `writes`. Watches replay scripts: each `watch()` call takes the next
script of its resource (a list of `(type, object)` or exceptions to raise); when none is left,
`exhausted` is set and the watch is empty, so a test can run a reflector until its scripts end.
Errors to inject go in `errors[(verb, plural)]` (raised once each, in order).
"""

from __future__ import annotations

import copy
import itertools
import threading
import uuid
from collections import defaultdict, deque
from typing import Any

from controlplane.store import kubeapi as K


def apply_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def _matches(labels: dict[str, str], selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeStream:
    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.closed = False

    def __iter__(self):
        for item in self.script:
            if self.closed:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.closed = True


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rv = 100
        self.writes: list[tuple[str, str, str, str, Any]] = []
        self.errors: dict[tuple[str, str], deque] = defaultdict(deque)
        self.scripts: dict[str, deque] = defaultdict(deque)
        self.watch_calls: list[tuple[str, str]] = []  # (plural, resourceVersion)
        self.list_calls: list[str] = []
        self.exhausted = threading.Event()
        self._ips = itertools.count(1)

    # -- helpers ----------------------------------------------------------------------------------
    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _fail(self, verb: str, resource: K.Resource) -> None:
        queue = self.errors.get((verb, resource.plural))
        if queue:
            raise queue.popleft()

    def key(self, resource: K.Resource, namespace: str | None, name: str) -> tuple[str, str, str]:
        return resource.plural, (namespace or "") if resource.namespaced else "", name

    def put(self, resource: K.Resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Seed an object directly (as if someone else created it); returns the stored copy."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2024-01-01T00:00:00Z")
        meta["resourceVersion"] = self._next_rv()
        obj.setdefault("apiVersion", resource.api_version)
        obj.setdefault("kind", resource.kind)
        if resource is K.SERVICES:
            obj.setdefault("spec", {}).setdefault("clusterIP", f"10.96.0.{next(self._ips)}")
        self.objects[self.key(resource, meta.get("namespace"), meta["name"])] = obj
        return copy.deepcopy(obj)

    def find(self, resource: K.Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get(self.key(resource, namespace, name)))

    def writes_of(self, verb: str | None = None, plural: str | None = None) -> list[tuple]:
        return [w for w in self.writes if (verb is None or w[0] == verb) and (plural is None or w[1] == plural)]

    # -- the wrapper's interface ------------------------------------------------------------------
    def list(self, resource, *, namespace=None, label_selector=None, field_selector=None):
        self.list_calls.append(resource.plural)
        self._fail("list", resource)
        items = [copy.deepcopy(o) for (plural, ns, _), o in sorted(self.objects.items())
                 if plural == resource.plural and (namespace is None or ns == namespace)
                 and _matches((o.get("metadata") or {}).get("labels") or {}, label_selector)]
        return K.ObjectList(items, str(self.rv))

    def watch(self, resource, *, resource_version, namespace=None, label_selector=None, field_selector=None,
              timeout_seconds=300):
        self.watch_calls.append((resource.plural, resource_version))
        self._fail("watch", resource)
        queue = self.scripts.get(resource.plural)
        if not queue:
            self.exhausted.set()
            return FakeStream([])
        return FakeStream(list(queue.popleft()))

    def get(self, resource, namespace, name):
        self._fail("get", resource)
        obj = self.find(resource, namespace, name)
        if obj is None:
            raise K.NotFound(f"reading {resource.describe(namespace, name)}: not found (404)", status=404)
        return obj

    def create(self, resource, namespace, body):
        self._fail("create", resource)
        name = body["metadata"]["name"]
        self.writes.append(("create", resource.plural, namespace or "", name, copy.deepcopy(body)))
        if self.key(resource, namespace, name) in self.objects:
            raise K.AlreadyExists(f"creating {resource.describe(namespace, name)}: already exists (409)",
                                  status=409, reason="AlreadyExists")
        obj = copy.deepcopy(body)
        if resource.namespaced:
            obj["metadata"]["namespace"] = namespace
        if resource.group == "clusterlink.net":
            obj["metadata"]["generation"] = 1
        return self.put(resource, obj)

    def replace(self, resource, namespace, name, body):
        self._fail("replace", resource)
        self.writes.append(("replace", resource.plural, namespace or "", name, copy.deepcopy(body)))
        current = self.objects.get(self.key(resource, namespace, name))
        if current is None:
            raise K.NotFound("not found (404)", status=404)
        want = (body.get("metadata") or {}).get("resourceVersion")
        if want and want != current["metadata"]["resourceVersion"]:
            raise K.Conflict("the object has been modified (409)", status=409, reason="Conflict")
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[self.key(resource, namespace, name)] = obj
        return copy.deepcopy(obj)

    def patch(self, resource, namespace, name, patch):
        self._fail("patch", resource)
        self.writes.append(("patch", resource.plural, namespace or "", name, copy.deepcopy(patch)))
        current = self.objects.get(self.key(resource, namespace, name))
        if current is None:
            raise K.NotFound(f"patching {resource.describe(namespace, name)}: not found (404)", status=404)
        meta = patch.get("metadata") or {}
        if meta.get("uid") and meta["uid"] != current["metadata"]["uid"]:
            raise K.Conflict("Precondition failed: UID in precondition (409)", status=409, reason="Conflict")
        if meta.get("resourceVersion") and meta["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise K.Conflict("the object has been modified (409)", status=409, reason="Conflict")
        obj = apply_merge_patch(current, patch)
        if "spec" in patch and resource.group == "clusterlink.net" and obj.get("spec") != current.get("spec"):
            obj["metadata"]["generation"] = int(current["metadata"].get("generation") or 1) + 1
        obj["metadata"]["resourceVersion"] = self._next_rv()
        obj["metadata"]["uid"] = current["metadata"]["uid"]
        self.objects[self.key(resource, namespace, name)] = obj
        return copy.deepcopy(obj)

    def patch_status(self, resource, namespace, name, status):
        self._fail("patch_status", resource)
        self.writes.append(("patch_status", resource.plural, namespace or "", name, copy.deepcopy(status)))
        current = self.objects.get(self.key(resource, namespace, name))
        if current is None:
            raise K.NotFound("not found (404)", status=404)
        obj = apply_merge_patch(current, {"status": status})
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[self.key(resource, namespace, name)] = obj
        return copy.deepcopy(obj)

    def delete(self, resource, namespace, name, *, uid=None):
        self._fail("delete", resource)
        self.writes.append(("delete", resource.plural, namespace or "", name, uid))
        current = self.objects.get(self.key(resource, namespace, name))
        if current is None:
            raise K.NotFound("not found (404)", status=404)
        if uid and uid != current["metadata"]["uid"]:
            raise K.Conflict("Precondition failed: UID (409)", status=409, reason="Conflict")
        del self.objects[self.key(resource, namespace, name)]

    def close(self) -> None:
        pass
