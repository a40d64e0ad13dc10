"""A real `clusterlink-agent` process, without a control plane (it keeps retrying while its
datapath, proxy and metrics run): its datapath came from the compiler process, which is gone; it
maps neither libbcc nor LLVM; /metrics reports its own resident memory; SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.agent import kit

pytestmark = pytest.mark.privileged

AGENT = Path(sys.executable).parent / "clusterlink-agent"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.fixture
def agent(cgroups: kit.Cgroups, processes: kit.Processes, tmp_path: Path):
    if not AGENT.exists():
        pytest.skip(f"{AGENT} is not installed: run make install")
    cgroup = cgroups.make(kit.new_id() + "ag")
    token = tmp_path / "join.token"
    token.write_text("not-checked-without-a-control-plane\n")
    metrics_port = free_port()
    log_path = tmp_path / "agent.log"
    argv = [str(AGENT), "--node", "test-node", "--cgroup", cgroup,
            "--controlplane", f"unix:{tmp_path / 'no-controlplane.sock'}", "--join-token-file", str(token),
            "--proxy-address", "127.0.0.1", "--proxy-port", str(free_port()),
            "--metrics-listen", f"127.0.0.1:{metrics_port}", "--log-format", "text"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    processes.register(proc.pid)
    deadline = time.monotonic() + 30
    while True:
        try:
            scrape(metrics_port)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError(f"agent did not serve /metrics: {log_path.read_text()}") from None
            time.sleep(0.1)
    yield proc, cgroup, metrics_port, log_path
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_running_agent_holds_no_bcc_and_reports_its_own_memory(agent) -> None:
    proc, cgroup, metrics_port, log_path = agent
    assert sorted(a["name"] for a in kit.cgroup_attachments(cgroup)) == sorted(
        ["cl_connect4", "cl_sockops", "cl_getpeername4", "cl_sock_release"])
    with open(f"/proc/{proc.pid}/maps") as f:
        mapped = {line.split()[-1] for line in f if any(s in line for s in ("libbcc", "LLVM", "clang"))}
    assert mapped == set()
    # The compiler process is gone (and reaped): the agent has no child processes.
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        assert f.read().split() == []
    samples = scrape(metrics_port)
    reported = samples["clusterlink_agent_process_resident_memory_bytes"]
    actual = status_kb(proc.pid, "VmRSS") * 1024
    assert abs(reported - actual) < 0.2 * actual, (reported, actual)
    # With BCC in the process it was about 170 MB; without it, under 60 (about 44 on this machine).
    assert actual < 60 * 2**20, f"agent VmRSS {actual / 2**20:.1f} MB"
    assert samples["clusterlink_agent_process_open_fds"] > 0
    assert samples["clusterlink_agent_attached_programs"] == 4
    assert "(event loop: uvloop)" in log_path.read_text()  # the default when uvloop is installed


def test_sigterm_stops_the_agent_and_removes_its_attachments(agent) -> None:
    proc, cgroup, _, log_path = agent
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log_path.read_text()
    assert kit.cgroup_attachments(cgroup) == []
    assert "attachments removed" in log_path.read_text()
    assert os.path.exists(cgroup)
