"""BPF programs (BCC) and their attachments and maps. The only place that imports bcc.

    Datapath(cgroup_path, *, owner="clusterlink-agent")   start / stop / reconcile / lookup / ...
    cleanup_cgroup(cgroup_path) -> list[str]               detach all of our programs (cleanup tools)
"""

from agent.datapath.attachments import cleanup_cgroup
from agent.datapath.datapath import Datapath, ReconcileResult, Redirect
from agent.datapath.errors import DatapathError

__all__ = ["Datapath", "DatapathError", "ReconcileResult", "Redirect", "cleanup_cgroup"]
