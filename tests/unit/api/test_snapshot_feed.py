"""SnapshotFeed when its CA file is bad: it keeps retrying (the file may be mounted or fixed
later), says why once, and never raises out of its task."""

from __future__ import annotations

import asyncio
import logging

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
