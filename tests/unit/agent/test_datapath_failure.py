"""How an agent names why its datapath did not start (the label of
clusterlink_agent_datapath_start_failures_total), from the datapath's own messages."""

from __future__ import annotations

import pytest

from agent.main import _failure_reason


@pytest.mark.parametrize("message, reason", [
    ("kernel headers missing: /lib/modules/6.18/build does not exist; BCC compiles ...", "kernel-headers"),
    ("BCC is not importable from this Python (No module named 'bcc')", "bcc"),
    ("cgroup path /x is not in a cgroup v2 hierarchy", "cgroup"),
    ("not root: the datapath loads and attaches BPF programs, which needs root or CAP_BPF, CAP_NET_ADMIN and "
     "CAP_SYS_ADMIN (this process: euid 1000, CapEff 0x0)", "privileges"),  # prerequisites.check_privileges
    ("cannot read the effective capabilities from /proc/self/status", "privileges"),
    ("Operation not permitted: permission denied", "privileges"),
    ("the BPF compiler process (pid 7) did not finish within 2 s and was killed", "other"),
])
def test_reasons(message, reason):
    assert _failure_reason(message) == reason
