"""ClusterLink node agent: eBPF connect() redirect, splice proxy, workload identity."""
