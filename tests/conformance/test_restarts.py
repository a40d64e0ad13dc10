"""Restarts: the control plane goes away and comes back with its state; established connections
through the agent and the gateways keep flowing, new ones keep working from the last snapshots;
a gateway restart drops its own connections only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from fabric.peer import ClusterLinkFabric

from .conftest import build_world
from .fabricutil import Access, allow_all, doc, import_doc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fabric needs root (netns, cgroups, BPF)")

TCP_ECHO_PORT = 7000
SINK_PORT = 7001

# A client that keeps one connection busy for `seconds`: sends a chunk every 50 ms and checks the
# echo byte for byte; prints a JSON verdict.
STEADY_CLIENT = textwrap.dedent("""
    import json, os, socket, sys, time
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.create_connection((host, port), timeout=10)
    sent = received = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            chunk = os.urandom(65536)
            s.sendall(chunk)
            got = b""
            while len(got) < len(chunk):
                data = s.recv(len(chunk) - len(got))
                if not data:
                    raise ConnectionError("closed mid-stream")
                got += data
            if got != chunk:
                raise ValueError("corrupted echo")
            sent += len(chunk); received += len(got)
            time.sleep(0.05)
        print(json.dumps({"ok": True, "sent": sent, "received": received}))
    except Exception as exc:
        print(json.dumps({"ok": False, "error": repr(exc), "sent": sent}))
""")


@pytest.fixture(scope="module")
def pair():
    with ClusterLinkFabric() as fab:
        w = build_world(fab, ("cl0", "cl1"))
        cl0, cl1 = w.peers["cl0"], w.peers["cl1"]
        tcp = cl0.add_pod("tcpecho", labels={"app": "tcpecho"})
        tcp.spawn([sys.executable, "-m", "fabric.workloads", "tcp-echo", "--port", str(TCP_ECHO_PORT)], name="tcp")
        sink = cl0.add_pod("sink", labels={"app": "sink"})
        sink.spawn([sys.executable, "-m", "fabric.workloads", "sink", "--port", str(SINK_PORT)], name="sink")
        cl0.apply(doc("LocalService", "tcpecho", {"host": tcp.ip}) + "---\n" +
                  doc("Export", "tcpecho", {"port": TCP_ECHO_PORT}) + "---\n" +
                  doc("LocalService", "sink", {"host": sink.ip}) + "---\n" +
                  doc("Export", "sink", {"port": SINK_PORT}) + "---\n" + allow_all())
        cl1.apply(allow_all() + "---\n" + import_doc("echo", [("cl0", "echo")]) + "---\n" +
                  import_doc("tcpecho", [("cl0", "tcpecho")], port=TCP_ECHO_PORT) + "---\n" +
                  import_doc("sink", [("cl0", "sink")], port=SINK_PORT))
        Access(fab, cl1, w.clients["cl1"], "echo").expect("cl0")
        yield w


def steady(w, seconds: float):  # type: ignore[no-untyped-def]
    cl1 = w.peers["cl1"]
    vip = cl1.vip("tcpecho")
    return w.clients["cl1"].spawn([sys.executable, "-c", STEADY_CLIENT, vip, str(TCP_ECHO_PORT), str(seconds)],
                                  name=f"steady-{time.monotonic_ns()}")


def attachments(cgroup) -> list[dict]:  # type: ignore[no-untyped-def]
    out = subprocess.run(["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip() or "[]")


def verdict(proc) -> dict:  # type: ignore[no-untyped-def]
    proc.wait(30)
    lines = [ln for ln in proc.log_text().splitlines() if ln.startswith("{")]
    assert lines, proc.log_text()
    return json.loads(lines[-1])


def test_controlplane_restart_keeps_state_and_connections(pair):
    w = pair
    cl1 = w.peers["cl1"]
    before = cl1.get("Import", "tcpecho", "default")[0]
    echo_vip = cl1.vip("echo")
    proc = steady(w, 6)
    time.sleep(1)
    cl1.stop_controlplane()
    w.peers["cl0"].stop_controlplane()
    try:
        # while both control planes are away, new connections still work from the last snapshots
        out = w.clients["cl1"].http_get(f"http://{echo_vip}:8080/", timeout=5)
        assert out.returncode == 0 and "cl0" in out.stdout, out.stdout + out.stderr
    finally:
        w.peers["cl0"].start_controlplane()
        cl1.start_controlplane()
    result = verdict(proc)
    assert result["ok"], result
    after = cl1.get("Import", "tcpecho", "default")[0]
    assert after["spec"]["targetPort"] == before["spec"]["targetPort"]
    assert after["status"]["vip"] == before["status"]["vip"]
    Access(w.fab, cl1, w.clients["cl1"], "echo").expect("cl0")


def test_agent_restart_under_load(pair):
    w = pair
    cl1 = w.peers["cl1"]
    proc = steady(w, 3)
    time.sleep(1)  # connected and flowing through the agent
    cl1.stop_agent("n1")
    cl1.start_agent("n1")
    verdict(proc)  # a connection relayed by the stopped agent may break; it must end, not hang
    Access(w.fab, cl1, w.clients["cl1"], "echo").expect("cl0")
    progs = [p["name"] for p in attachments(cl1.node("n1").pods_cgroup)]
    assert len(progs) == len(set(progs)), f"duplicate attachments after an agent restart: {progs}"
    result = verdict(steady(w, 2))
    assert result["ok"], result


def test_agent_stop_removes_its_attachments(pair):
    w = pair
    cl1 = w.peers["cl1"]
    cgroup = cl1.node("n1").pods_cgroup
    cl1.stop_agent("n1")
    try:
        left = attachments(cgroup)
        assert left == [], left
    finally:
        cl1.start_agent("n1")
    Access(w.fab, cl1, w.clients["cl1"], "echo").expect("cl0")


@pytest.mark.slow
def test_one_gib_through_the_vip_arrives_intact(pair):
    """Client pod → VIP → eBPF → agent splice → gateway → mTLS → gateway → sink pod, checksummed."""
    w = pair
    vip = w.peers["cl1"].vip("sink")
    size = 1 << 30
    out = w.clients["cl1"].workload("tcp-send", "--host", vip, "--port", str(SINK_PORT), "--bytes", str(size),
                                    "--timeout", "120", timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout)
    count, digest = result["reply"].split()
    assert int(count) == size and result["sent"] == size
    assert digest == result["sha256"], result
