"""Which pod a cgroup belongs to, from its path alone (pure).

The kubelet puts every pod in a cgroup named after the pod's UID, below the QoS class, and each
container in a child of it. The two layouts:

- cgroupfs driver:  .../kubepods/<qos>/pod<uid>/<container id>   (guaranteed pods: kubepods/pod<uid>)
- systemd driver:   .../kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/
                    cri-containerd-<id>.scope   (crio-<id>.scope, docker-<id>.scope)

and the same under a custom root (kind: /kubelet.slice/kubelet-kubepods.slice/...). Static pods
are named after their manifest hash (32 hex digits, no dashes) instead of a UUID; their mirror pod
carries that hash in the `kubernetes.io/config.mirror` annotation.
"""

from __future__ import annotations

import re

_UUID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
_HASH = r"[0-9a-f]{32}"
_CGROUPFS = re.compile(rf"^pod(?P<uid>{_UUID}|{_HASH})$")
_SYSTEMD = re.compile(rf"^(?:[a-z0-9_]+-)*kubepods(?:-[a-z]+)?-pod(?P<uid>{_UUID}|{_HASH})\.slice$")


def pod_uid_from_component(component: str) -> str | None:
    """The pod UID named by one path component, or None."""
    match = _CGROUPFS.match(component) or _SYSTEMD.match(component)
    if match is None:
        return None
    return match.group("uid").replace("_", "-")


def pod_uid_from_cgroup(path: str) -> str | None:
    """The UID of the pod whose cgroup is `path` or an ancestor of it; None outside any pod.

    The innermost pod component wins. UIDs come back as the API server writes them
    (lowercase, with dashes).
    """
    for component in reversed(path.lower().strip("/").split("/")):
        uid = pod_uid_from_component(component)
        if uid is not None:
            return uid
    return None
