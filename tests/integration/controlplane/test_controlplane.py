"""The control-plane process: management API, statuses, persistence, authentication, snapshots."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest

from controlplane.api.client import APIError, SnapshotFeed
from controlplane.tokens import TokenAuthority

from tests.samples import SAMPLES

IMPORT = """
apiVersion: clusterlink.net/v1alpha1
kind: Import
metadata: {{name: {name}, namespace: default}}
spec:
  port: 9080
  {target}
  sources: [{{peer: west, exportName: reviews, exportNamespace: default}}]
"""


def wait_for(fn, timeout=10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def test_clusterlink_samples_apply_unchanged(controlplane):
    for path in sorted(SAMPLES.glob("*/*.yaml")):
        text = re.sub(r"\$\{\w+\}", "127.0.0.9", path.read_text())
        results = controlplane.apply(text)
        assert results and all(r.split()[-1] in ("created", "configured", "unchanged") for r in results), results


def test_import_gets_a_port_and_vip_that_survive_a_restart(controlplane):
    controlplane.apply(IMPORT.format(name="reviews", target=""))
    imp = wait_for(lambda: (lambda o: o if conditions(o).get("ImportServiceValid") else None)(
        controlplane.get("Import", "reviews", "default")[0]))
    assert conditions(imp)["ImportTargetPortValid"]["status"] == "True"
    port, vip = imp["spec"]["targetPort"], imp["status"]["vip"]
    assert 1024 <= port < 49152 and vip.startswith("10.96.")
    controlplane.stop()
    controlplane.start()
    again = controlplane.get("Import", "reviews", "default")[0]
    assert again["spec"]["targetPort"] == port and again["status"]["vip"] == vip


def test_import_target_port_conflict_is_a_condition(controlplane):
    controlplane.apply(IMPORT.format(name="first", target="targetPort: 20000"))
    wait_for(lambda: conditions(controlplane.get("Import", "first", "default")[0]).get("ImportTargetPortValid"))
    controlplane.apply(IMPORT.format(name="second", target="targetPort: 20000"))
    cond = wait_for(lambda: conditions(controlplane.get("Import", "second", "default")[0]).get(
        "ImportTargetPortValid"))
    assert cond["status"] == "False" and cond["reason"] == "Error"
    assert "already leased by import default/first" in cond["message"]
    # deleting the holder frees the port for the other one
    controlplane.call(lambda c: c.delete("Import", "default", "first"))
    cond = wait_for(lambda: (lambda c: c if c and c["status"] == "True" else None)(
        conditions(controlplane.get("Import", "second", "default")[0]).get("ImportTargetPortValid")))
    assert cond["reason"] == "Leased"


def test_export_validity_follows_the_local_service(controlplane):
    controlplane.apply("apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {name: reviews}\n"
                       "spec: {port: 9080}\n")
    cond = wait_for(lambda: conditions(controlplane.get("Export", "reviews", "default")[0]).get("ExportValid"))
    assert cond["status"] == "False" and cond["message"] == "export service 'default/reviews' does not exist"
    controlplane.apply("apiVersion: clusterlink.net/v1alpha1\nkind: LocalService\nmetadata: {name: reviews}\n"
                       "spec: {host: 10.1.2.3}\n")
    cond = wait_for(lambda: (lambda c: c if c["status"] == "True" else None)(
        conditions(controlplane.get("Export", "reviews", "default")[0])["ExportValid"]))
    assert cond["reason"] == "Verified"


def test_an_invalid_document_applies_nothing(controlplane):
    good = "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {name: a}\nspec: {port: 1}\n"
    bad = "apiVersion: clusterlink.net/v1alpha1\nkind: Export\nmetadata: {name: b}\nspec: {port: -1}\n"
    with pytest.raises(APIError) as err:
        controlplane.apply(good + "---\n" + bad)
    assert err.value.code == "INVALID_ARGUMENT" and "spec.port" in err.value.message
    assert controlplane.get("Export") == []


def test_peer_outside_the_clusterlink_namespace_is_refused(controlplane):
    with pytest.raises(APIError, match="ClusterLink namespace"):
        controlplane.apply("apiVersion: clusterlink.net/v1alpha1\nkind: Peer\nmetadata: {name: w, namespace: x}\n"
                           "spec: {gateways: [{host: 127.0.0.9, port: 443}]}\n")


def test_unreachable_peer_condition(controlplane):
    # 127.0.0.9:1 refuses connections: the first heartbeat decides
    controlplane.apply("apiVersion: clusterlink.net/v1alpha1\nkind: Peer\n"
                       "metadata: {name: west, namespace: clusterlink-system}\n"
                       "spec: {gateways: [{host: 127.0.0.9, port: 1}]}\n")
    cond = wait_for(lambda: conditions(controlplane.get("Peer", "west", "clusterlink-system")[0]).get(
        "PeerReachable"))
    assert cond["status"] == "False" and cond["reason"] == "Heartbeat"


@pytest.mark.parametrize("token, code", [("", "UNAUTHENTICATED"), ("wrong", "PERMISSION_DENIED")])
def test_management_needs_the_admin_token(controlplane, token, code):
    with pytest.raises(APIError) as err:
        controlplane.call(lambda c: c.get("Import"), token=token)
    assert err.value.code == code


def test_the_join_token_is_not_an_admin_token(controlplane):
    with pytest.raises(APIError) as err:
        controlplane.call(lambda c: c.get("Import"), token=controlplane.join_token)
    assert err.value.code == "PERMISSION_DENIED"


def test_agents_register_and_gateways_get_versioned_snapshots(controlplane):
    resp = controlplane.call(lambda c: c.register("n1"), token=controlplane.join_token)
    snapshots = []

    async def watch() -> None:
        feed = SnapshotFeed(controlplane.endpoint(controlplane.join_token), role="gateway",
                            on_snapshot=snapshots.append)
        task = asyncio.create_task(feed.run())
        try:
            await asyncio.wait_for(_until(lambda: len(snapshots) >= 1), 10)
            await asyncio.to_thread(controlplane.apply, IMPORT.format(name="reviews", target=""))
            await asyncio.wait_for(_until(lambda: any(s.imports and s.imports[0].target_port for s in snapshots)),
                                   10)
        finally:
            task.cancel()

    asyncio.run(watch())
    assert snapshots[0].peer_name == "east" and len(snapshots[0].token_key) == 32
    versions = [s.version for s in snapshots]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    authority = TokenAuthority(snapshots[-1].token_key, "east")
    assert authority.verify_agent_credential(resp.credential) == "n1"


async def _until(pred) -> None:  # type: ignore[no-untyped-def]
    while not pred():
        await asyncio.sleep(0.05)


def test_register_refuses_the_admin_token(controlplane):
    with pytest.raises(APIError) as err:
        controlplane.call(lambda c: c.register("n1"))
    assert err.value.code == "PERMISSION_DENIED"


def test_a_resumed_watch_at_the_current_version_reports_connected(controlplane):
    """A gateway that already holds the current snapshot gets no message on reconnect, yet knows
    the stream is up (readiness, metrics)."""
    first = []

    async def watch() -> tuple[bool, int]:
        feed = SnapshotFeed(controlplane.endpoint(controlplane.join_token), role="gateway", on_snapshot=first.append)
        task = asyncio.create_task(feed.run())
        try:
            await asyncio.wait_for(_until(lambda: len(first) >= 1), 10)
        finally:
            task.cancel()
        resumed = []
        again = SnapshotFeed(controlplane.endpoint(controlplane.join_token), role="gateway",
                             on_snapshot=resumed.append)
        again.version = first[-1].version
        task = asyncio.create_task(again.run())
        try:
            await asyncio.wait_for(_until(lambda: again.connected), 10)
        finally:
            task.cancel()
        return again.connected, len(resumed)

    connected, messages = asyncio.run(watch())
    assert connected and messages == 0


POLICY = """
apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {{name: {name}, namespace: default}}
spec: {{action: deny, from: [{{workloadSelector: {{}}}}], to: [{{workloadSelector: {{}}}}]}}
"""


def test_apply_and_delete_return_once_the_watchers_put_the_change_in_force(controlplane):
    """A gateway that has not yet applied the snapshot holds the answer back; one that is stuck
    makes the answer say so, by name; a watcher of an older version (no instance) is not waited for."""
    gate = asyncio.Event()
    applied: list[int] = []

    async def slow(snap) -> None:  # type: ignore[no-untyped-def]
        if applied:  # the first snapshot goes through; every later one waits for the gate
            await gate.wait()
        applied.append(snap.version)

    async def go():  # type: ignore[no-untyped-def]
        join = controlplane.endpoint(controlplane.join_token)
        feed = SnapshotFeed(join, role="gateway", on_snapshot=slow, name="gateway slow")
        old = SnapshotFeed(join, role="gateway", on_snapshot=lambda s: None, acknowledge=False)
        tasks = [asyncio.create_task(feed.run()), asyncio.create_task(old.run())]
        try:
            await asyncio.wait_for(_until(lambda: applied and old.version), 10)
            stuck = await controlplane_call(lambda c: c.apply(POLICY.format(name="deny-1"), wait=1.0))
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, gate.set)
            started = time.monotonic()
            released = await controlplane_call(lambda c: c.delete("AccessPolicy", "default", "deny-1", wait=10.0))
            took = time.monotonic() - started
            quick = await controlplane_call(lambda c: c.apply(POLICY.format(name="deny-2"), wait=10.0))
            unwaited = await controlplane_call(lambda c: c.apply(POLICY.format(name="deny-3")))
            return stuck, released, took, quick, unwaited, feed.version
        finally:
            for t in tasks:
                t.cancel()

    async def controlplane_call(fn):  # type: ignore[no-untyped-def]
        return await asyncio.to_thread(controlplane.call, fn)

    stuck, released, took, quick, unwaited, last = asyncio.run(go())
    assert stuck.results == ["accesspolicy.clusterlink.net default/deny-1 created"]
    r = stuck.rollout
    assert r.waited and not r.complete and r.confirmed == 0 and r.silent == 1, r
    assert len(r.pending) == 1 and r.pending[0].startswith("gateway slow stream 1: holds snapshot "), r.pending
    # the delete waited for the slow gateway to apply both changes (released after 0.3 s)
    assert released.complete and released.confirmed == 1 and 0.25 < took < 5, (released, took)
    assert quick.rollout.complete and quick.rollout.gateway_version == last
    assert not unwaited.rollout.waited
    # the CLI: the same stuck case exits 3 and names the gateway (here none is stuck: exit 0)
    out = controlplane.cli("apply", "--wait", "5", "-f", "-", input=POLICY.format(name="deny-4"))
    assert out.returncode == 0, out.stderr
    assert "no gateway or agent is connected" in out.stderr  # the feeds have stopped


def test_cli_apply_says_which_gateway_has_not_put_the_change_in_force(controlplane):
    hold = asyncio.Event()
    count = [0]

    async def stuck(snap) -> None:  # type: ignore[no-untyped-def]
        count[0] += 1
        if count[0] > 1:
            await hold.wait()  # never set: this gateway never applies the change

    async def go():  # type: ignore[no-untyped-def]
        feed = SnapshotFeed(controlplane.endpoint(controlplane.join_token), role="gateway", on_snapshot=stuck,
                            name="gateway frozen")
        task = asyncio.create_task(feed.run())
        try:
            await asyncio.wait_for(_until(lambda: count[0] >= 1), 10)
            return await asyncio.to_thread(controlplane.cli, "apply", "--wait", "1", "-f", "-",
                                           input=POLICY.format(name="deny-x"))
        finally:
            task.cancel()

    out = asyncio.run(go())
    assert out.returncode == 3, (out.returncode, out.stdout, out.stderr)
    assert out.stdout.strip() == "accesspolicy.clusterlink.net default/deny-x created"
    assert "not yet in force on 1 of 1 gateways and agents" in out.stderr
    assert "gateway frozen stream 1: holds snapshot" in out.stderr
    # stored all the same
    assert [p["metadata"]["name"] for p in controlplane.get("AccessPolicy")] == ["deny-x"]
    bad = controlplane.cli("apply", "--wait", "-1", "-f", "-", input=POLICY.format(name="deny-y"))
    assert bad.returncode == 2 and "--wait must be between 0 and 300" in bad.stderr


def test_tokens_from_the_store_are_made_once_and_checked(tmp_path):
    """--tokens store (what the chart runs): no token files; the tokens live in the store, are
    made at the first start and kept across restarts, and the API checks them."""
    from controlplane.store.sqlite import SQLiteStore

    from .conftest import RunningControlPlane

    cp = RunningControlPlane(tmp_path)
    cp.start("--tokens", "store")
    try:
        assert not (tmp_path / "admin.token").exists() and not (tmp_path / "join.token").exists()
        store = SQLiteStore(tmp_path / "state.db")
        admin, join = store.token("admin-token"), store.token("join-token")
        store.close()
        assert cp.call(lambda c: c.get("Import"), token=admin) == "[]"
        with pytest.raises(APIError) as err:
            cp.call(lambda c: c.get("Import"), token=join)
        assert err.value.code == "PERMISSION_DENIED"
        cp.stop()
        cp.start("--tokens", "store")
        assert cp.call(lambda c: c.get("Import"), token=admin) == "[]"  # the same token after a restart
    finally:
        cp.stop()


def test_status_and_diagnose_show_what_is_connected_and_what_is_wrong(controlplane):
    """`clusterlink status` lists the gateway worker connected (current), the peers, imports and
    policies; `diagnose` says fail for what is broken (a peer never reached, no agent is only a
    warning) and exits 1."""
    controlplane.apply("apiVersion: clusterlink.net/v1alpha1\nkind: Peer\n"
                       "metadata: {name: west, namespace: clusterlink-system}\n"
                       "spec: {gateways: [{host: 127.0.0.1, port: 1}]}\n")
    controlplane.apply(IMPORT.format(name="reviews", target=""))
    ready: list[int] = []

    async def go():  # type: ignore[no-untyped-def]
        feed = SnapshotFeed(controlplane.endpoint(controlplane.join_token), role="gateway",
                            on_snapshot=lambda s: ready.append(s.version), name="gateway east worker 0")
        task = asyncio.create_task(feed.run())
        try:
            await asyncio.wait_for(_until(lambda: ready), 10)
            await asyncio.sleep(0.3)  # its ack
            # the heartbeat (1 s probe timeout) marks west unreachable
            for _ in range(150):
                if '"False"' in json.dumps(await asyncio.to_thread(controlplane.get, "Peer")):
                    break
                await asyncio.sleep(0.1)
            status = await asyncio.to_thread(controlplane.cli, "status", "-o", "json")
            text = await asyncio.to_thread(controlplane.cli, "status")
            diag = await asyncio.to_thread(controlplane.cli, "diagnose", "-o", "json")
            return status, text, diag
        finally:
            task.cancel()

    status, text, diag = asyncio.run(go())
    assert status.returncode == 0, status.stderr
    st = json.loads(status.stdout)
    assert st["peer"] == "east" and st["store"] == "sqlite" and st["certificate"]["days_left"] > 300
    (gw,) = st["watchers"]
    assert gw["role"] == "gateway" and gw["current"] and gw["instance"].startswith("gateway east worker 0")
    assert [p["name"] for p in st["peers"]] == ["west"] and st["peers"][0]["reachable"] == "False"
    assert [i["name"] for i in st["imports"]] == ["reviews"]
    assert "Gateways (1):" in text.stdout and "Agents (0): none connected" in text.stdout
    assert diag.returncode == 1
    verdicts = {c["name"]: c["verdict"] for c in json.loads(diag.stdout)}
    assert verdicts["control-plane"] == verdicts["gateways"] == verdicts["certificate"] == "ok"
    assert verdicts["peer west"] == "fail" and verdicts["agents"] == "warn" and verdicts["policies"] == "warn"


def test_diagnose_without_a_control_plane_is_a_failed_check(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, CLUSTERLINK_CONTROLPLANE=f"unix:{tmp_path / 'none.sock'}", CLUSTERLINK_TOKEN="x")
    out = subprocess.run([str(Path(sys.executable).parent / "clusterlink"), "diagnose"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout.startswith("FAIL  control-plane  cannot reach the control plane")


def test_the_dns_responder_answers_with_the_vip_of_an_import(tmp_path):
    """A real control plane with --dns-listen: an Import's name resolves to its VIP once leased, a
    name that is no Import is NXDOMAIN, and garbage before a query changes nothing."""
    import socket
    import struct

    from tests.integration.controlplane.conftest import RunningControlPlane

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    cp = RunningControlPlane(tmp_path)
    cp.start("--dns-listen", f"127.0.0.1:{port}")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(2)
    try:
        def resolve(name: str, ident: int):  # type: ignore[no-untyped-def]
            qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
            client.sendto(b"\x01garbage", ("127.0.0.1", port))
            client.sendto(struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + b"\0\x01\0\x01",
                          ("127.0.0.1", port))
            while True:
                reply = client.recv(512)
                if struct.unpack_from("!H", reply)[0] == ident:
                    break
            rcode, answers = reply[3] & 0xF, struct.unpack_from("!H", reply, 6)[0]
            return rcode, socket.inet_ntoa(reply[-4:]) if answers else None

        assert wait_for(lambda: resolve("reviews.default.svc.clusterset.local", 1)[0] == 3, 10)  # no Import yet
        cp.apply(IMPORT.format(name="reviews", target=""))
        vip = wait_for(lambda: (cp.get("Import", "reviews", "default")[0].get("status") or {}).get("vip"))
        assert vip and wait_for(lambda: resolve("reviews.default.svc.clusterset.local", 2) == (0, vip))
        assert resolve("ratings.default.svc.clusterset.local", 3) == (3, None)
        assert resolve("example.com", 4) == (5, None)
    finally:
        client.close()
        cp.stop()
    assert "DNS responder for *.svc.clusterset.local on 127.0.0.1" in (tmp_path / "controlplane.log").read_text()


def test_mcs_needs_the_kubernetes_store_and_dns_a_valid_address(tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "controlplane.server.main", "--certs", str(tmp_path)]
    mcs = subprocess.run([*base, "--mcs", "on"], capture_output=True, text=True, timeout=30)
    assert mcs.returncode == 2 and "--mcs on needs --store kubernetes" in mcs.stderr
    dns = subprocess.run([*base, "--dns-listen", "localhost"], capture_output=True, text=True, timeout=30)
    assert dns.returncode == 2 and "--dns-listen" in dns.stderr and "host:port" in dns.stderr
