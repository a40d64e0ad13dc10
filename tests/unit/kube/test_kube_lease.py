"""Leader election on a Lease: one leader among replicas, takeover after expiry, step-down, release."""

import asyncio
import datetime as dt

import pytest

from controlplane.store import kubeapi as K
from controlplane.store.kube_lease import LeaderElector, LeaseConfig
from tests.unit.kube.fakekube import FakeKube


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


WALL = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def elector(api, identity, clock):
    return LeaderElector(api, LeaseConfig("cl", "clusterlink-controlplane", identity), clock=clock,
                         wall=lambda: WALL + dt.timedelta(seconds=clock.now))


def lease(api):
    return api.find(K.LEASES, "cl", "clusterlink-controlplane")["spec"]


def test_first_replica_creates_the_lease_and_leads_the_other_follows():
    api, clock = FakeKube(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.step() is True and a.leading
    assert b.step() is None and not b.leading
    spec = lease(api)
    assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 15
    assert spec["renewTime"].endswith("Z") and "." in spec["renewTime"]  # MicroTime


def test_the_leader_renews_and_keeps_leading():
    api, clock = FakeKube(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.step()
    for _ in range(20):
        clock.now += 2
        assert a.step() is None and a.leading
        assert b.step() is None and not b.leading
    assert lease(api)["leaseTransitions"] == 0


def test_takeover_only_after_the_lease_went_unrenewed_for_its_duration():
    api, clock = FakeKube(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.step()
    b.step()  # b observes a's record now
    clock.now += 14
    assert b.step() is None  # not expired yet on b's clock
    clock.now += 2
    assert b.step() is True and lease(api)["holderIdentity"] == "b" and lease(api)["leaseTransitions"] == 1
    # a comes back: it finds the lease taken and steps down at once
    assert a.step() is False and not a.leading


def test_a_leader_that_cannot_renew_steps_down_before_the_lease_expires():
    api, clock = FakeKube(), Clock()
    a = elector(api, "a", clock)
    a.step()
    for _ in range(5):
        api.errors[("get", "leases")].append(K.TemporaryError("API server unavailable"))
    clock.now += 2
    assert a.step() is None and a.leading  # one failure: still within the renew deadline
    clock.now += 9
    assert a.step() is False and not a.leading  # 11 s without renewing > 10 s deadline < 15 s duration


def test_two_replicas_racing_for_a_free_lease_cannot_both_win():
    api, clock = FakeKube(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.step()
    clock.now += 20  # a died silently; the lease has expired for everyone
    original_replace = api.replace

    def racing_replace(resource, namespace, name, body):
        if body["spec"]["holderIdentity"] == "b":  # c sneaks in between b's read and b's write
            api.patch(resource, namespace, name, {"spec": {"holderIdentity": "c"}})
        return original_replace(resource, namespace, name, body)

    api.replace = racing_replace
    b.step()  # observes
    clock.now += 16
    assert b.step() is None and not b.leading
    assert lease(api)["holderIdentity"] == "c"


def test_release_hands_the_lease_over_immediately():
    api, clock = FakeKube(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    a.step()
    b.step()
    assert a.release() and not a.leading
    assert not lease(api).get("holderIdentity") and lease(api)["leaseDurationSeconds"] == 1
    clock.now += 1
    assert b.step() is True  # no waiting for the 15 s expiry


def test_config_is_checked():
    with pytest.raises(ValueError):
        LeaseConfig("cl", "l", "a", duration=10, renew_deadline=10)
    with pytest.raises(ValueError):
        LeaseConfig("cl", "l", "")


def test_run_reports_changes_on_the_loop_and_releases_on_cancel():
    api = FakeKube()
    e = LeaderElector(api, LeaseConfig("cl", "l", "a", duration=0.6, renew_deadline=0.4, retry_period=0.05))
    changes = []

    async def main():
        task = asyncio.create_task(e.run(changes.append))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert changes == [True, False]
    assert not api.find(K.LEASES, "cl", "l")["spec"].get("holderIdentity")
