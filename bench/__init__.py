"""The project's benchmark (`make bench`, `python -m bench`): throughput, connection setup, request
latency, CPU and memory of the product's data path on the simulated fabric, each measured in the same
run as its baselines (direct TCP and a HAProxy mTLS pair), plus policy decision time and the machine.

Layout (one responsibility per module):
  cli        command line, root check, writing bench/results/latest.json, printing the table
  settings   the run's knobs (full, --quick, --smoke), a frozen dataclass
  suite      the sections, repetitions interleaved across paths
  world      the fabric the paths run on (peers, pods, servers, imports, the splice hop, HAProxy)
  paths      path names, their topology and which processes are each path's proxies (pure)
  runs       one measurement (iperf3 or the request client) with CPU and noise bookkeeping
  sampling   CPU windows per component, load sampler (RSS), waiting for an idle machine
  procstat   /proc and cgroup readers
  haproxy    the HAProxy pair: configuration (pure), processes, stats socket
  client     the bounded request/response client, run inside a pod
  echo       the echo server, run inside a pod
  splicehop  the agent's NodeProxy as a bare relay (agent_hop)
  tlsprobe   which TLS version and cipher a listener negotiates
  machine    cores, kernel, versions
  stats      medians, spreads, percentiles, ratios (pure)
  report     the JSON report from the raw runs (pure); targets; table
  schema     the documented keys of the report, and a checker
"""
