#!/usr/bin/env bash
# Fails when a test run left anything behind: cl* network namespaces, links, cgroups, processes.
set -u
left=""
ns=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^cl' | tr '\n' ' ')
[ -n "$ns" ] && left+=" netns: $ns;"
cg=$(ls -d /sys/fs/cgroup/unified/cl* 2>/dev/null | tr '\n' ' ')
[ -n "$cg" ] && left+=" cgroups: $cg;"
links=$(ip -o link 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^cl' | tr '\n' ' ')
[ -n "$links" ] && left+=" links: $links;"
procs=$(pgrep -a -f 'clusterlink-(controlplane|gateway|agent)|-m (agent|controlplane)' 2>/dev/null | grep -v -E 'pgrep|check-leftovers' | cut -c1-120)
[ -n "$procs" ] && left+=" processes: $(echo "$procs" | tr '\n' '|');"
if [ -n "$left" ]; then
  echo "leftovers after the run:$left" >&2
  exit 1
fi
echo "no leftovers"
