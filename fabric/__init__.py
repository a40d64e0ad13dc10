"""Simulated fabric: N peers on one machine from network namespaces, veths and cgroup v2 subtrees."""
