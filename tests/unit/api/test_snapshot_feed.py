"""SnapshotFeed: when its CA file is bad it keeps retrying (the file may be mounted or fixed
later), says why once, and never raises out of its task; denial reports reach a real grpc
control plane, and one that answers UNIMPLEMENTED (older) is not asked again."""

from __future__ import annotations

import asyncio
import logging

import grpc

from controlplane.api.client import Endpoint, SnapshotFeed


def test_a_bad_ca_file_is_retried_and_reported_once(tmp_path, caplog):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    caplog.set_level(logging.ERROR, logger="controlplane.api.client")
    feed = SnapshotFeed(Endpoint(address="127.0.0.1:1", token="t", ca_file=bad), role="agent", node="n1",
                        on_snapshot=lambda s: None, min_backoff=0.01, max_backoff=0.02)

    async def run() -> bool:
        task = asyncio.create_task(feed.run())
        await asyncio.sleep(0.5)
        alive = not task.done()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return alive

    assert asyncio.run(run()), "the feed's task ended"
    assert feed.last_error == f"the CA file {bad} holds no PEM certificate" and not feed.connected
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"cannot connect to the control plane at 127.0.0.1:1: the CA file {bad} holds no PEM "
                      "certificate"], errors


class _ControlPlane:
    """A real grpc.aio control plane on a unix socket that serves one snapshot and either takes
    denial reports or answers them UNIMPLEMENTED (an older control plane)."""

    def __init__(self, takes_reports: bool) -> None:
        from controlplane.api import clusterlink_pb2 as pb
        from controlplane.api import clusterlink_pb2_grpc as pb_grpc

        outer = self
        self.reports: list = []
        self.calls = 0

        class Servicer(pb_grpc.ControlPlaneServicer):
            async def Watch(self, request, context):  # type: ignore[no-untyped-def]
                yield pb.Snapshot(version=1, peer_name="cl1")
                await asyncio.Event().wait()

            async def Report(self, request, context):  # type: ignore[no-untyped-def]
                outer.calls += 1
                if not takes_reports:
                    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
                outer.reports.append(request)
                return pb.ReportResponse()

        self.servicer = Servicer()


def _report_twice(tmp_path, takes_reports: bool):  # type: ignore[no-untyped-def]
    from controlplane.api import clusterlink_pb2 as pb
    from controlplane.api import clusterlink_pb2_grpc as pb_grpc

    cp = _ControlPlane(takes_reports)

    async def run() -> list[bool]:
        server = grpc.aio.server()
        pb_grpc.add_ControlPlaneServicer_to_server(cp.servicer, server)
        server.add_insecure_port(f"unix:{tmp_path / 'cp.sock'}")
        await server.start()
        got = asyncio.Event()
        feed = SnapshotFeed(Endpoint(address=f"unix:{tmp_path / 'cp.sock'}", token="t"), role="gateway",
                            on_snapshot=lambda s: got.set(), acknowledge=False)
        task = asyncio.create_task(feed.run())
        try:
            await asyncio.wait_for(got.wait(), 10)
            denial = pb.Denial(direction="egress", namespace="default", name="web", peer="cl2", policy="p", count=3)
            return [await feed.report([denial]), await feed.report([denial])]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await server.stop(None)

    return asyncio.run(run()), cp


def test_reports_reach_the_control_plane(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sent, cp = _report_twice(tmp_path, takes_reports=True)
    assert sent == [True, True] and cp.calls == 2
    assert [(d.name, d.count) for d in cp.reports[0].denials] == [("web", 3)]


def test_an_older_control_plane_is_not_asked_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sent, cp = _report_twice(tmp_path, takes_reports=False)
    assert sent == [False, False] and cp.calls == 1  # after UNIMPLEMENTED, no second call


def _feed_against(address: str, seconds: float) -> tuple[bool, SnapshotFeed]:
    """Run a feed against `address` for `seconds`; whether its task was still running, and the feed."""
    feed = SnapshotFeed(Endpoint(address=address, token="t"), role="agent", node="n1", on_snapshot=lambda s: None,
                        min_backoff=0.01, max_backoff=0.05, acknowledge=False)

    async def run() -> bool:
        task = asyncio.create_task(feed.run())
        await asyncio.sleep(seconds)
        alive = not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return alive

    return asyncio.run(run()), feed


def test_a_control_plane_that_resets_every_connection_is_retried(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Resets at any moment (while the call is being sent, or after): the feed's task never dies
    of it, keeps reconnecting, and says why it is not connected."""
    import socket
    import struct
    import threading

    path = tmp_path / "reset.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(64)
    accepted = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # an empty SETTINGS frame, then RST
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        alive, feed = _feed_against(f"unix:{path}", 1.0)
    finally:
        listener.close()
        thread.join(5)
    assert alive, "the feed's task ended"
    assert len(accepted) >= 3, accepted  # it reconnected, with backoff
    assert not feed.connected and feed.last_error.startswith("UNAVAILABLE: "), feed.last_error


def test_an_undecodable_snapshot_breaks_the_stream_not_the_feed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def watch(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        yield b"\xff\xff\xff\xff"  # not a Snapshot

    async def run() -> tuple[bool, SnapshotFeed]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("clusterlink.v1.ControlPlane", {
            "Watch": grpc.unary_stream_rpc_method_handler(watch)})])
        server.add_insecure_port(f"unix:{tmp_path / 'cp.sock'}")
        await server.start()
        try:
            return await asyncio.to_thread(_feed_against, f"unix:{tmp_path / 'cp.sock'}", 0.5)
        finally:
            await server.stop(None)

    alive, feed = asyncio.run(run())
    assert alive and feed.version == 0 and not feed.connected
    assert feed.last_error.startswith("INTERNAL: undecodable snapshot"), feed.last_error
