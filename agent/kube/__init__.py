"""The agent in Kubernetes: cgroup → pod resolution (namespace, service account, labels) from a watch
of this node's pods. `PodResolver(node=...)`: `await start()`, `resolve(cgroup_path)`, `await stop()`."""

from .pods import PodIndex, PodResolver, WorkloadAttributes

__all__ = ["PodIndex", "PodResolver", "WorkloadAttributes"]
