"""BPF programs (BCC) and their attachments and maps. The only package that imports bcc, and only
in its compiler process (compiler.py, loader.py): the agent itself never does.

    Datapath(cgroup_path, *, owner="clusterlink-agent")   start / stop / reconcile / lookup / ...
    cleanup_cgroup(cgroup_path) -> list[str]               detach all of our programs (cleanup tools)
"""

from agent.datapath.attachments import cleanup_cgroup
from agent.datapath.datapath import Datapath, ReconcileResult, Redirect
from agent.datapath.errors import DatapathError

__all__ = ["Datapath", "DatapathError", "ReconcileResult", "Redirect", "cleanup_cgroup"]
