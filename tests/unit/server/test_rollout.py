"""Rollouts: waiting for every acknowledging watcher to hold a change, and naming those that do not."""

from __future__ import annotations

import asyncio

from controlplane.server.rollout import Rollouts


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_wait_returns_when_every_watcher_acknowledged_its_target():
    async def go():  # type: ignore[no-untyped-def]
        r = Rollouts()
        assert r.open("gw-0", "gateway", "", 5) and r.open("agent-a", "agent", "a", 7)
        waiter = asyncio.create_task(r.wait(lambda role, node: 10 if role == "gateway" else 8, 5.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        r.ack("gw-0", 10)
        await asyncio.sleep(0.05)
        assert not waiter.done()  # the agent still holds 7
        r.ack("agent-a", 8)
        return await asyncio.wait_for(waiter, 1.0)

    result = run(go())
    assert result.complete and result.confirmed == 2 and result.pending == ()


def test_wait_times_out_naming_who_is_behind_and_what_they_hold():
    async def go():  # type: ignore[no-untyped-def]
        r = Rollouts()
        r.open("gateway west worker 0", "gateway", "", 3)
        r.open("gateway west worker 1", "gateway", "", 3)
        r.ack("gateway west worker 0", 9)
        return await r.wait(lambda role, node: 9, 0.2)

    result = run(go())
    assert not result.complete and result.confirmed == 1
    assert result.pending == ("gateway west worker 1: holds snapshot 3, the change is in 9",)


def test_a_closed_stream_is_no_longer_waited_for_and_acks_of_unknown_instances_are_refused():
    async def go():  # type: ignore[no-untyped-def]
        r = Rollouts()
        r.open("gone", "gateway", "", 1)
        waiter = asyncio.create_task(r.wait(lambda role, node: 2, 5.0))
        await asyncio.sleep(0.05)
        r.close("gone", True)
        result = await asyncio.wait_for(waiter, 1.0)
        return result, r.ack("gone", 2), len(r)

    result, known, left = run(go())
    assert result.complete and result.confirmed == 0 and not known and left == 0


def test_watchers_without_instance_or_with_a_duplicate_one_are_silent_not_waited_for():
    async def go():  # type: ignore[no-untyped-def]
        r = Rollouts()
        assert not r.open("", "gateway", "", 0)  # an older gateway: does not acknowledge
        assert r.open("same", "gateway", "", 0)
        assert not r.open("same", "gateway", "", 0)  # a second stream may not take over the first's name
        r.ack("same", 4)
        first = await r.wait(lambda role, node: 4, 0.5)
        r.close("", False)
        r.close("same", False)  # the duplicate closes: the first stream is still waited for
        second = await r.wait(lambda role, node: 5, 0.1)
        return first, second

    first, second = run(go())
    assert first.complete and first.silent == 2 and first.confirmed == 1
    assert not second.complete and second.silent == 0 and len(second.pending) == 1


def test_a_target_of_zero_waits_for_nothing_and_acks_never_go_back():
    async def go():  # type: ignore[no-untyped-def]
        r = Rollouts()
        r.open("agent-b", "agent", "b", 0)
        nothing = await r.wait(lambda role, node: 0, 5.0)  # that node's view does not exist yet
        r.ack("agent-b", 6)
        r.ack("agent-b", 4)  # a late, older ack
        return nothing, await r.wait(lambda role, node: 6, 0.1)

    nothing, held = run(go())
    assert nothing.complete and held.complete
