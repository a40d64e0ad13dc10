"""Nothing of a fabric survives it: destroy(), a build failing half-way, a crash followed by clean-up."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from fabric import FabricInUse, Topology, netns, spawn
from fabric.cgroups import DEFAULT_ROOT
from fabric.commands import CommandError
from fabric.leftovers import DEFAULT_RUNTIME_ROOT
from fabric.removal import process_running
from fabric.workloads import EXIT_OK
from tests.integration.fabric.support import REPO, WORKLOADS, http_echo, http_get, privileged

pytestmark = privileged

CRASHING_OWNER = """
import json, sys, time
from pathlib import Path
from fabric import Topology
from fabric.cgroups import attachments
from tests.integration.fabric.bpf_program import attach_legacy_egress_program

topo = Topology()
pod = topo.add_peer("a").add_node("n1").add_pod("p1")
topo.build()
server = pod.spawn([sys.executable, "-m", "fabric.workloads", "tcp-echo", "--port", "7000"], log_path=Path(sys.argv[1]))
server.wait_log("listening")
attach_legacy_egress_program(pod.node.pods_cgroup)
prog = attachments(pod.node.pods_cgroup)[0].prog_id
print(json.dumps({"id": topo.fabric_id, "server": server.pid, "prog": prog}), flush=True)
time.sleep(120)
"""


def leftovers(prefix: str) -> list[str]:
    """What a user would find of a fabric: its namespaces, root-namespace links, cgroups, runtime dir."""
    return (
        [f"netns {n}" for n in netns.names(prefix)]
        + [f"link {name}" for name in netns.links(None, prefix)]
        + [f"cgroup {p}" for p in DEFAULT_ROOT.glob(prefix + "*")]
        + [f"runtime dir {p}" for p in DEFAULT_RUNTIME_ROOT.glob(prefix + "*")]
    )


def one_pod(topo: Topology):
    peer = topo.add_peer("a")
    node = peer.add_node("n1")
    return peer, node, node.add_pod("p1")


def cleanup_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fabric.cleanup", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


@contextmanager
def crashed_fabric(tmp_path: Path) -> Iterator[dict]:
    """A child builds a fabric, starts a server in a pod, attaches a legacy BPF program, and is SIGKILLed."""
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_OWNER, str(tmp_path / "server.log")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )
    info: dict = {}
    try:
        ready, _, _ = select.select([child.stdout], [], [], 60)
        assert ready, "the child did not build its fabric within 60 s"
        line = child.stdout.readline()
        assert line, f"the child failed: {child.stderr.read()}"
        info = json.loads(line)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        yield info
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdout.close()
        child.stderr.close()
        if info:
            Topology(fabric_id=info["id"]).destroy()  # whatever the test left, so that a failure leaves nothing


def test_destroy_leaves_nothing_even_with_processes_running(tmp_path: Path) -> None:
    topo = Topology()
    _, node, pod = one_pod(topo)
    topo.build()
    prefix = topo.prefix
    assert len(leftovers(prefix)) == 1 + 5 + 1  # one cgroup tree; netns wan, lan, gw, node, pod; runtime dir
    owned = pod.spawn(WORKLOADS + ["tcp-echo", "--port", "7000"], log_path=tmp_path / "echo.log")
    owned.wait_log("listening")
    # Processes the topology does not own: one only in the node's netns, one only in the pod's cgroup.
    in_netns = spawn(["sleep", "60"], netns=node.netns, log_path=tmp_path / "a.log")
    in_cgroup = spawn(["sleep", "60"], cgroup=pod.cgroup, log_path=tmp_path / "b.log")
    in_netns.wait_ready(lambda: os.stat(f"/proc/{in_netns.pid}/ns/net").st_ino == netns.inode(node.netns), 5)

    topo.destroy()

    assert leftovers(prefix) == []
    assert not owned.alive
    assert in_netns.wait(5) == -signal.SIGKILL and in_cgroup.wait(5) == -signal.SIGKILL
    topo.destroy()  # idempotent
    assert leftovers(prefix) == []


def test_a_destroyed_topology_builds_again(tmp_path: Path) -> None:
    with Topology() as topo:
        _, _, pod = one_pod(topo)
        topo.build()
        topo.destroy()
        topo.build()
        http_echo(pod, "again", 8080, tmp_path)
        assert http_get(pod.node, f"http://{pod.ip}:8080/").returncode == EXIT_OK
    assert leftovers(topo.prefix) == []


def test_leaving_the_with_block_on_an_error_destroys() -> None:
    with pytest.raises(RuntimeError, match="test failure"), Topology() as topo:
        one_pod(topo)
        topo.build()
        raise RuntimeError("test failure")
    assert leftovers(topo.prefix) == []


def test_a_build_that_fails_half_way_removes_what_it_built() -> None:
    topo = Topology()
    one_pod(topo)
    topo.build()
    b = topo.add_peer("b")
    b.add_node("n1").add_pod("p1")
    netns.add(f"{topo.prefix}.b.gw")  # in the way of peer b's gateway: the next build fails half-way
    with pytest.raises(CommandError, match="File exists"):
        topo.build()
    assert leftovers(topo.prefix) == []


def test_an_id_in_use_is_refused_and_its_fabric_untouched(tmp_path: Path) -> None:
    with Topology() as live:
        _, _, pod = one_pod(live)
        live.build()
        http_echo(pod, "live", 8080, tmp_path)
        intruder = Topology(fabric_id=live.fabric_id)
        one_pod(intruder)
        with pytest.raises(FabricInUse, match=live.fabric_id):
            intruder.build()
        assert http_get(pod.node, f"http://{pod.ip}:8080/").returncode == EXIT_OK


def test_cleanup_removes_what_a_crashed_run_left(tmp_path: Path) -> None:
    with crashed_fabric(tmp_path) as crashed:
        prefix = f"cl{crashed['id']}"
        assert leftovers(prefix) and process_running(crashed["server"])  # the crash left everything behind

        dry = cleanup_cli("--id", crashed["id"], "--dry-run")
        assert dry.returncode == 0 and f"would delete netns {prefix}.a.n1.p1" in dry.stdout
        assert process_running(crashed["server"]) and netns.exists(f"{prefix}.a.n1.p1")

        result = cleanup_cli("--id", crashed["id"])
        assert result.returncode == 0, result.stderr
        assert f"stop pid {crashed['server']}" in result.stdout
        assert f"detach BPF program {crashed['prog']}" in result.stdout
        assert f"delete netns {prefix}.a.n1.p1" in result.stdout
        assert f"remove cgroup {DEFAULT_ROOT / prefix}" in result.stdout

        assert leftovers(prefix) == []
        assert not process_running(crashed["server"])
        assert subprocess.run(["bpftool", "prog", "show", "id", str(crashed["prog"])], capture_output=True).returncode != 0
        assert "nothing to remove" in cleanup_cli("--id", crashed["id"]).stdout


def test_destroy_with_the_crashed_id_removes_it_too(tmp_path: Path) -> None:
    with crashed_fabric(tmp_path) as crashed:
        Topology(fabric_id=crashed["id"]).destroy()
        assert leftovers(f"cl{crashed['id']}") == []
        assert not process_running(crashed["server"])


def test_cleanup_without_an_id_leaves_live_fabrics_alone(tmp_path: Path) -> None:
    with Topology() as live, crashed_fabric(tmp_path) as crashed:
        one_pod(live)
        live.build()
        result = cleanup_cli("--dry-run")  # a dry run: other people's fabrics on this machine are not touched
        assert result.returncode == 0, result.stderr
        assert f"skipping fabric {live.prefix}: in use by live pid {os.getpid()}" in result.stdout
        assert f"fabric cl{crashed['id']}: would delete netns cl{crashed['id']}.a.gw" in result.stdout


def test_two_topologies_at_once_do_not_collide(tmp_path: Path) -> None:
    with Topology() as one, Topology() as two:
        for topo in one, two:
            node = topo.add_peer("a").add_node("n1")
            node.add_pod("p1")
            node.add_pod("p2")
        with ThreadPoolExecutor(2) as pool:  # built at the same time
            for future in [pool.submit(one.build), pool.submit(two.build)]:
                future.result(timeout=60)
        assert one.prefix != two.prefix
        assert not set(netns.names(one.prefix)) & set(netns.names(two.prefix))
        for topo, name in (one, "one"), (two, "two"):
            pods = topo.peers["a"].nodes["n1"].pods
            http_echo(pods["p2"], name, 8080, tmp_path)
        for topo, name in (one, "one"), (two, "two"):
            pods = topo.peers["a"].nodes["n1"].pods
            result = http_get(pods["p1"], f"http://{pods['p2'].ip}:8080/")  # the same address in both fabrics
            assert json.loads(result.stdout)["server"] == name
        one.destroy()
        assert leftovers(one.prefix) == []
        pods = two.peers["a"].nodes["n1"].pods
        assert json.loads(http_get(pods["p1"], f"http://{pods['p2'].ip}:8080/").stdout)["server"] == "two"
