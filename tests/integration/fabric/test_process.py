"""Processes in the fabric: where they run, how they are waited for, stopped and recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fabric import ProcessDied, ProcessGroup, Topology, netns, run, spawn
from fabric.cgroups import of_process
from tests.integration.fabric.support import WORKLOADS, http_echo, privileged

pytestmark = privileged

PY = sys.executable


def exec_done(proc) -> bool:
    """nsenter has exec'd the program: its command line is ours (before that it is nsenter's)."""
    with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[0] == proc.argv[0].encode()


def test_a_pod_process_is_in_the_pods_cgroup_and_netns(fabric: Topology, tmp_path: Path) -> None:
    pod = fabric.peers["a"].nodes["n1"].pods["p1"]
    proc = pod.spawn(["sleep", "30"], log_path=tmp_path / "sleep.log")
    proc.wait_ready(lambda: exec_done(proc), timeout=5, what="exec'd")
    assert "/" + of_process(proc.pid).lstrip("/") == "/" + str(pod.cgroup.relative_to(fabric.cgroup_root))
    assert os.stat(f"/proc/{proc.pid}/ns/net").st_ino == netns.inode(pod.netns)
    assert os.stat(f"/proc/{proc.pid}/ns/mnt").st_ino == os.stat("/proc/self/ns/mnt").st_ino  # /sys stays visible


def test_sockets_of_a_pod_process_belong_to_the_pods_cgroup(fabric: Topology, tmp_path: Path) -> None:
    pod = fabric.peers["a"].nodes["n1"].pods["p2"]
    http_echo(pod, "p2", 8080, tmp_path)
    listeners = pod.run(["ss", "-Htln", "--cgroup", "sport = :8080"], check=True).stdout
    assert f"cgroup:/{pod.cgroup.relative_to(fabric.cgroup_root)}" in listeners, listeners


def test_run_uses_the_places_netns_and_cgroup(fabric: Topology) -> None:
    node = fabric.peers["a"].nodes["n2"]
    out = node.run(["cat", "/proc/self/cgroup"], check=True).stdout
    assert f"0::/{node.cgroup.relative_to(fabric.cgroup_root)}" in out.splitlines()
    addresses = node.run(["ip", "-o", "-4", "addr", "show"], check=True).stdout
    assert node.lan_ip in addresses and node.pod_gateway_ip in addresses


def test_run_is_bounded_in_time(fabric: Topology) -> None:
    pod = fabric.peers["a"].nodes["n1"].pods["p1"]
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        pod.run(["sleep", "30"], timeout=0.3)
    assert time.monotonic() - started < 5
    assert not [p for p in netns.pids(pod.netns) if Path(f"/proc/{p}/comm").read_text().strip() == "sleep"]


def test_wait_helpers(fabric: Topology, tmp_path: Path) -> None:
    a = fabric.peers["a"]
    pod, other = a.nodes["n1"].pods["p1"], a.nodes["n2"].pods["p3"]
    server = pod.spawn(WORKLOADS + ["tcp-echo", "--port", "7000"], log_path=tmp_path / "echo.log")
    server.wait_tcp(other.netns, pod.ip, 7000, timeout=10)
    assert server.wait_log(r"tcp-echo listening on (\S+)", timeout=5).group(1) == "0.0.0.0:7000"
    with pytest.raises(TimeoutError, match="not logging"):
        server.wait_log("never printed", timeout=0.3)

    sock = tmp_path / "app.sock"
    code = f"import socket,time; time.sleep(0.3); s=socket.socket(socket.AF_UNIX); s.bind({str(sock)!r}); s.listen(); time.sleep(30)"
    unix_server = pod.spawn([PY, "-c", code], log_path=tmp_path / "unix.log")
    unix_server.wait_unix(sock, timeout=5)


def test_waiting_for_a_process_that_dies_says_so(fabric: Topology, tmp_path: Path) -> None:
    pod = fabric.peers["a"].nodes["n1"].pods["p1"]
    proc = pod.spawn([PY, "-c", "import sys; print('bad config'); sys.exit(3)"], log_path=tmp_path / "dies.log")
    with pytest.raises(ProcessDied, match=r"exited with 3[\s\S]*bad config"):
        proc.wait_log("ready", timeout=10)
    missing = pod.spawn(["/nonexistent/program"], log_path=tmp_path / "missing.log")
    with pytest.raises(ProcessDied, match="exited with 127"):
        missing.wait_ready(lambda: False, timeout=10)


def test_stop_escalates_to_sigkill_and_reaps(fabric: Topology, tmp_path: Path) -> None:
    pod = fabric.peers["a"].nodes["n1"].pods["p1"]
    stubborn = pod.spawn(
        [PY, "-c", "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
        log_path=tmp_path / "stubborn.log",
    )
    stubborn.wait_log("ready")
    started = time.monotonic()
    assert stubborn.stop(timeout=0.5) == -9
    assert time.monotonic() - started < 3
    assert not stubborn.alive and not Path(f"/proc/{stubborn.pid}").exists()

    polite = http_echo(pod, "polite", 8081, tmp_path)
    assert polite.stop() == 0  # SIGTERM is a clean exit for the workloads
    assert polite.kill() == 0  # and stopping twice is harmless


def test_spawned_pids_are_recorded_for_crash_cleanup(fabric: Topology, tmp_path: Path) -> None:
    pod = fabric.peers["a"].nodes["n1"].pods["p1"]
    proc = pod.spawn(["sleep", "30"], log_path=tmp_path / "sleep.log")
    records = [json.loads(line) for line in fabric.pid_file.read_text().splitlines()]
    mine = [r for r in records if r["pid"] == proc.pid]
    assert mine and mine[0]["argv"] == ["sleep", "30"] and mine[0]["command"][0] == "sh" and "nsenter" in mine[0]["command"]


def test_process_group_stops_in_reverse_order(tmp_path: Path) -> None:
    order = tmp_path / "order"
    code = (
        "import signal,sys,time\n"
        "def bye(*_):\n"
        f"    open({str(order)!r}, 'a').write(sys.argv[1] + '\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye); print('ready', flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    with ProcessGroup(pid_file=tmp_path / "pids") as group:
        for name in ("first", "second", "third"):
            group.spawn([PY, "-c", code, name], log_path=tmp_path / f"{name}.log").wait_log("ready")
    assert order.read_text().split() == ["third", "second", "first"]
    assert len((tmp_path / "pids").read_text().splitlines()) == 3


def test_spawn_refuses_a_missing_netns_or_cgroup(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="network namespace"):
        spawn(["true"], netns="clzzzz.missing", log_path=tmp_path / "x.log")
    with pytest.raises(FileNotFoundError, match="cgroup"):
        run(["true"], cgroup=tmp_path / "not-a-cgroup")
