"""Simulated fabric: N peers on one machine from network namespaces, veths and cgroup v2 subtrees."""

from fabric.process import ProcessDied, ProcessGroup, Proc, probe_tcp, run, spawn
from fabric.topology import FabricError, FabricInUse, NodeNet, PeerNet, PodNet, Topology

__all__ = [
    "FabricError",
    "FabricInUse",
    "NodeNet",
    "PeerNet",
    "PodNet",
    "Proc",
    "ProcessDied",
    "ProcessGroup",
    "Topology",
    "probe_tcp",
    "run",
    "spawn",
]
