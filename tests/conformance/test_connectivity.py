"""ClusterLink TestConnectivity, plus what the eBPF path adds: the VIP, getpeername, default deny."""

from __future__ import annotations

from fabric.workloads import EXIT_OK

from .fabricutil import ECHO_PORT, Access, allow_all, import_doc


def test_connectivity_through_the_vip(clean):
    w = clean
    cl0, cl1 = w.peers["cl0"], w.peers["cl1"]
    cl0.apply(allow_all())
    cl1.apply(allow_all() + "---\n" + import_doc("echo", [("cl0", "echo")]))
    access = Access(w.fab, cl1, w.clients["cl1"], "echo")
    access.expect("cl0")
    vip = cl1.vip("echo")
    out = w.clients["cl1"].workload("getpeername", "--host", vip, "--port", str(ECHO_PORT))
    assert out.returncode == 0 and vip in out.stdout, out.stdout + out.stderr


def test_connectivity_through_the_target_port(clean):
    """Clients the agent does not cover reach the gateway's target port (ClusterLink's classic path)."""
    w = clean
    w.peers["cl0"].apply(allow_all())
    w.peers["cl1"].apply(allow_all() + "---\n" + import_doc("echo", [("cl0", "echo")]))
    Access(w.fab, w.peers["cl1"], w.clients["cl1"], "echo", via="target-port").expect("cl0")


def test_default_deny_resets_the_client(clean):
    w = clean
    w.peers["cl1"].apply(import_doc("echo", [("cl0", "echo")]))
    access = Access(w.fab, w.peers["cl1"], w.clients["cl1"], "echo")
    code, text = access.once()
    assert code != EXIT_OK, f"default deny let the request through: {text}"


def test_ingress_default_deny(clean):
    """Allowed on egress only: the exporting peer still denies."""
    w = clean
    w.peers["cl1"].apply(allow_all() + "---\n" + import_doc("echo", [("cl0", "echo")]))
    access = Access(w.fab, w.peers["cl1"], w.clients["cl1"], "echo")
    access.expect(None)
    w.peers["cl0"].apply(allow_all())
    access.expect("cl0")
