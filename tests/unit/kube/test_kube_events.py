"""Kubernetes Events: what deserves one (conditions, peers, rejected objects), and how they are
written through the wrapper (the in-memory fake of it): one Event per fact, a growing
series.count for repeats at most once per interval, bounded, best effort, leader only."""

from __future__ import annotations

import threading

import pytest

from controlplane.model.conditions import set_condition
from controlplane.server import events as E
from controlplane.server.kube_events import KubeEvents
from controlplane.server.reconciler import Reconciler, ReconcilerConfig
from controlplane.store import kubeapi as K
from controlplane.store.kube import WATCHED, KubeStore
from controlplane.store.kube_services import ImportServices
from tests.unit.kube import rawobjects as R
from tests.unit.kube.fakekube import FakeKube

SYSTEM = "clusterlink-system"
IMPORTS = K.CLUSTERLINK["Import"]
POLICIES = K.CLUSTERLINK["AccessPolicy"]
REF = E.ObjectRef("Import", "default", "web", "uid-1")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def events_of(api: FakeKube) -> list[dict]:
    return [o for (plural, _, _), o in sorted(api.objects.items()) if plural == "events"]


# -- what deserves an Event ------------------------------------------------------------------------------


def test_a_condition_turning_false_is_a_warning_and_back_to_true_a_normal_event() -> None:
    ok = set_condition({}, "ImportTargetPortValid", True, "Leased", "port 7000")
    bad = set_condition(ok, "ImportTargetPortValid", False, "Error", "port 7000 is taken by default/old")
    note = E.condition_note(ok, bad, "ImportTargetPortValid")
    assert note is not None and (note.type, note.reason) == (E.WARNING, "Error")
    assert "taken by default/old" in note.message
    assert E.condition_note(bad, bad, "ImportTargetPortValid") is None  # unchanged: nothing new
    assert E.condition_note({}, bad, "ImportTargetPortValid").type == E.WARNING  # false from the start
    good = E.condition_note(bad, ok, "ImportTargetPortValid")
    assert good is not None and good.type == E.NORMAL
    assert E.condition_note({}, ok, "ImportTargetPortValid") is None  # valid from the start: no noise
    other = set_condition(bad, "ImportTargetPortValid", False, "Conflict", "another reason")
    assert E.condition_note(bad, other, "ImportTargetPortValid").reason == "Conflict"


def test_peer_events_on_changes_but_not_on_a_first_good_heartbeat() -> None:
    assert E.peer_note("cl2", True, None) is None
    assert E.peer_note("cl2", False, None).reason == E.PEER_UNREACHABLE
    assert E.peer_note("cl2", False, True).type == E.WARNING
    assert E.peer_note("cl2", True, False).reason == E.PEER_REACHABLE
    assert E.peer_note("cl2", True, True) is None and E.peer_note("cl2", False, False) is None


# -- writing them ----------------------------------------------------------------------------------------


def test_an_event_names_its_object_and_repeats_grow_one_series() -> None:
    api, clock = FakeKube(), Clock()
    events = KubeEvents(api, fallback_namespace=SYSTEM, leading=lambda: True, instance="cp-0", clock=clock,
                        repeat_interval=60.0)
    note = E.EventNote(E.WARNING, "Error", "port 7000 is taken", "Reconcile")
    events.record(REF, note)
    events.drain()
    (event,) = events_of(api)
    assert event["metadata"]["namespace"] == "default" and event["metadata"]["name"].startswith("web.")
    assert event["regarding"] == {"apiVersion": "clusterlink.net/v1alpha1", "kind": "Import", "name": "web",
                                  "namespace": "default", "uid": "uid-1"}
    assert (event["type"], event["reason"], event["note"], event["action"]) == ("Warning", "Error",
                                                                                "port 7000 is taken", "Reconcile")
    assert event["reportingController"] == "clusterlink.net/controlplane" and event["reportingInstance"] == "cp-0"
    assert event["eventTime"].endswith("Z") and "." in event["eventTime"]
    # repeats within the interval: counted, not written; after it, one patch with the count
    for _ in range(5):
        events.record(REF, note)
    events.drain()
    assert api.writes_of("patch", "events") == []
    clock.now += 61
    events.flush()
    (patch,) = api.writes_of("patch", "events")
    assert patch[4]["series"]["count"] == 6
    assert len(events_of(api)) == 1
    # another message is another Event
    events.record(REF, E.EventNote(E.NORMAL, "Leased", "port 7001", "Reconcile"))
    events.drain()
    assert len(events_of(api)) == 2


def test_an_expired_event_is_created_again_and_failures_are_counted_not_raised() -> None:
    api, clock = FakeKube(), Clock()
    events = KubeEvents(api, fallback_namespace=SYSTEM, leading=lambda: True, clock=clock, repeat_interval=1.0)
    note = E.EventNote(E.WARNING, "Rejected", "bad", "Validate")
    events.write(REF, note)
    api.objects.clear()  # the API server dropped it (1 h TTL)
    clock.now += 5
    events.write(REF, note)
    assert len(events_of(api)) == 1
    api.errors[("create", "events")].append(K.PermanentError("forbidden (403)", status=403))
    events.write(E.ObjectRef("Export", "default", "db"), note)
    assert events.failed == 1  # logged, never raised
    api.errors[("patch", "events")].append(K.TemporaryError("timeout"))
    clock.now += 5
    events.write(REF, note)
    assert events.failed == 2


def test_cluster_scoped_objects_get_events_in_the_system_namespace() -> None:
    api = FakeKube()
    events = KubeEvents(api, fallback_namespace=SYSTEM, leading=lambda: True)
    events.write(E.ObjectRef("PrivilegedAccessPolicy", "", "deny-all"), E.rejected_note("spec.action: bad"))
    (event,) = events_of(api)
    assert event["metadata"]["namespace"] == SYSTEM and "namespace" not in event["regarding"]


def test_followers_record_nothing_and_the_queue_is_bounded() -> None:
    api = FakeKube()
    leading = [False]
    events = KubeEvents(api, fallback_namespace=SYSTEM, leading=lambda: leading[0], queue_size=3)
    note = E.EventNote(E.WARNING, "Error", "x", "Reconcile")
    events.record(REF, note)
    events.drain()
    assert events_of(api) == []
    leading[0] = True
    for i in range(10):
        events.record(E.ObjectRef("Import", "default", f"i{i}"), note)
    assert events.dropped == 7
    events.drain()
    assert len(events_of(api)) == 3


def test_the_writer_thread_writes_and_stops() -> None:
    api = FakeKube()
    events = KubeEvents(api, fallback_namespace=SYSTEM, leading=lambda: True)
    stop = threading.Event()
    thread = events.start(stop)
    events.record(REF, E.rejected_note("why"))
    stop.set()
    thread.join(5)
    assert not thread.is_alive() and len(events_of(api)) == 1


# -- from the control plane's own passes -----------------------------------------------------------------


@pytest.fixture
def cluster():  # type: ignore[no-untyped-def]
    api = FakeKube()
    store = KubeStore(api, namespace=SYSTEM)
    store.leader = True
    events = KubeEvents(api, fallback_namespace=SYSTEM, leading=lambda: True)
    rejected = []
    store.on_invalid = lambda *args: rejected.append(args)
    services = ImportServices(api, store, system_namespace=SYSTEM, gateway_selector={"app": "gw"})
    config = ReconcilerConfig(peer_name="client", peer_labels={}, system_namespace=SYSTEM, reserved_ports={},
                              vip_range=None, gateway_agent_address="gw:4443", kubernetes=True)
    reconciler = Reconciler(config, store, token_key=b"k" * 32, services=services, events=events)
    for resource in WATCHED:
        store.handle_list(resource, [])
    return api, store, reconciler, events, rejected


def test_an_import_port_conflict_is_an_event_on_the_import_that_lost(cluster) -> None:  # type: ignore[no-untyped-def]
    api, store, reconciler, events, _ = cluster
    for name, created in (("old", "2024-01-01T00:00:00Z"), ("new", "2024-02-01T00:00:00Z")):
        raw = R.import_(name, "default", target=7000)
        raw["metadata"]["creationTimestamp"] = created
        store.handle_event(IMPORTS, "ADDED", api.put(IMPORTS, raw))
    reconciler.reconcile_once()
    events.drain()
    warnings = [e for e in events_of(api) if e["type"] == "Warning"]
    assert {e["regarding"]["name"] for e in warnings} == {"new"}
    assert any("7000" in e["note"] and "ImportTargetPortValid" in e["note"] for e in warnings), warnings
    count = len(events_of(api))
    reconciler.reconcile_once()  # nothing changed: no new Event
    events.drain()
    assert len(events_of(api)) == count


def test_a_malformed_policy_is_reported_once_with_its_problem(cluster) -> None:  # type: ignore[no-untyped-def]
    api, store, _, _, rejected = cluster
    bad = R.policy("broken", "default")
    bad["spec"]["action"] = "maybe"
    stored = api.put(POLICIES, bad)
    store.handle_event(POLICIES, "ADDED", stored)
    store.handle_event(POLICIES, "MODIFIED", stored)  # the same problem again: not reported again
    assert len(rejected) == 1
    kind, namespace, name, uid, why = rejected[0]
    assert (kind, namespace, name, uid) == ("AccessPolicy", "default", "broken", stored["metadata"]["uid"])
    assert "action" in why
    # a new leader hears of it again, with the same uid (so its Event names the same object)
    store.replay_invalid()
    assert rejected[1] == rejected[0]


def test_counts_not_written_before_an_event_expired_go_into_its_successor() -> None:
    api, clock = FakeKube(), Clock()
    events = KubeEvents(api, fallback_namespace=SYSTEM, leading=lambda: True, clock=clock, repeat_interval=60.0)
    note = E.EventNote(E.WARNING, "PolicyDenied", "connections to peer cl2 denied", "Authorize")
    events.write(REF, note)
    events.write(REF, note, count=4)  # within the interval: counted, not written
    api.objects.clear()  # expired meanwhile
    clock.now += 61
    events.flush()
    (event,) = events_of(api)
    assert event["series"]["count"] == 4 and event["reason"] == "PolicyDenied"
