"""List+watch through the fake wrapper: resourceVersion handling, expiry (410), reconnect, resync."""

import threading

import pytest

from controlplane.store import kubeapi as K
from controlplane.store.base import EventType
from controlplane.store.kube import KubeStore
from controlplane.store.kube_reflector import Reflector
from tests.unit.kube import rawobjects as R
from tests.unit.kube.fakekube import FakeKube

IMPORTS = K.CLUSTERLINK["Import"]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run(api, store, *, clock=None, **kw):
    """Run a reflector of Imports until the fake has no watch script left."""
    stop = api.exhausted  # set by the fake when a watch finds no script left
    reflector = Reflector(api, IMPORTS, store, backoff_initial=0.001, backoff_max=0.002, min_watch_duration=0.0,
                          clock=clock or Clock(), **kw)
    reflector.run(stop)
    return reflector


@pytest.fixture
def api():
    return FakeKube()


@pytest.fixture
def store(api):
    return KubeStore(api, namespace="clusterlink-system")


def test_list_then_watch_from_the_list_version_then_from_the_last_event(api, store):
    api.put(IMPORTS, R.import_("a"))
    listed_rv = str(api.rv)
    api.scripts["imports"].extend([
        [("ADDED", R.import_("b", rv=500)), ("BOOKMARK", {"metadata": {"resourceVersion": "510"}})],
        [("MODIFIED", R.import_("b", rv=520, port=1))],
    ])
    events = []
    store.subscribe(events.append)
    reflector = run(api, store)
    assert [c[1] for c in api.watch_calls] == [listed_rv, "510", "520"]  # the bookmark moved the version
    assert [(e.type, e.obj.name) for e in events] == [(EventType.ADDED, "a"), (EventType.ADDED, "b"),
                                                      (EventType.MODIFIED, "b")]
    assert reflector.lists == 1 and store.get("Import", "default", "b").spec["port"] == 1


def test_expired_version_lists_again_and_reports_what_was_missed(api, store):
    api.put(IMPORTS, R.import_("a"))
    api.put(IMPORTS, R.import_("b"))
    gone = K.Gone("watching imports: too old resource version (410)", status=410)

    api.scripts["imports"].append([gone])
    events = []
    store.subscribe(events.append)

    # while the watch was broken, "a" was deleted and "c" created: only a new list can tell
    original_watch = api.watch

    def watch(resource, **kw):
        stream = original_watch(resource, **kw)
        if len(api.watch_calls) == 1:
            del api.objects[api.key(IMPORTS, "default", "a")]
            api.put(IMPORTS, R.import_("c"))
        return stream

    api.watch = watch
    reflector = run(api, store)
    assert reflector.lists == 2
    assert sorted((e.type.value, e.obj.name) for e in events[2:]) == [("ADDED", "c"), ("DELETED", "a")]
    assert {o.name for o in store.list("Import")} == {"b", "c"}


def test_temporary_failures_reconnect_from_the_last_version_without_listing(api, store):
    api.scripts["imports"].extend([
        [("ADDED", R.import_("a", rv=600)), K.TemporaryError("connection reset")],
        [("ADDED", R.import_("b", rv=610))],
    ])
    api.errors[("watch", "imports")].append(K.TemporaryError("API server restarting (503)", status=503))
    reflector = run(api, store)
    versions = [c[1] for c in api.watch_calls]
    # first watch fails to open; the retry opens, breaks after "a"; the next resumes after "a"
    assert versions[1:3] == [versions[0], "600"] and reflector.lists == 1
    assert reflector.errors == 2
    assert {o.name for o in store.list("Import")} == {"a", "b"}


def test_list_failure_is_retried(api, store):
    api.errors[("list", "imports")].extend([K.TemporaryError("down"), K.PermanentError("forbidden (403)")])
    api.put(IMPORTS, R.import_("a"))
    reflector = run(api, store)
    assert reflector.lists == 1 and reflector.errors == 2 and store.get("Import", "default", "a") is not None
    assert store.is_synced() is False  # only Imports were listed here


def test_resync_lists_again_after_the_period(api, store):
    clock = Clock()
    api.put(IMPORTS, R.import_("a"))

    original_watch = api.watch

    def watch(resource, **kw):
        clock.now += 400.0  # each watch lasts 400 s of fake time
        return original_watch(resource, **kw)

    api.watch = watch
    api.scripts["imports"].extend([[], [], []])
    events = []
    store.subscribe(events.append)
    reflector = run(api, store, clock=clock, resync_period=600.0)
    assert reflector.lists == 2  # at 0 s, and again once 600 s had passed
    assert len(events) == 1  # the resync found nothing new


def test_watch_timeout_never_outlives_the_resync(api, store):
    api.scripts["imports"].append([])
    calls = []
    original_watch = api.watch

    def watch(resource, **kw):
        calls.append(kw["timeout_seconds"])
        return original_watch(resource, **kw)

    api.watch = watch
    run(api, store, resync_period=90.0, watch_timeout=300)
    assert calls and all(t <= 90 for t in calls)


def test_close_interrupts_the_current_watch():
    api = FakeKube()
    store = KubeStore(api, namespace="x")
    reflector = Reflector(api, IMPORTS, store)
    stream_opened = threading.Event()
    stop = threading.Event()

    class Blocking:
        def __init__(self):
            self.closed = threading.Event()

        def __iter__(self):
            stream_opened.set()
            self.closed.wait(10)
            return iter(())

        def close(self):
            self.closed.set()

    api.watch = lambda resource, **kw: Blocking()
    t = threading.Thread(target=reflector.run, args=(stop,), daemon=True)
    t.start()
    assert stream_opened.wait(5)
    stop.set()
    reflector.close()
    t.join(5)
    assert not t.is_alive()


def test_invalid_periods_are_refused():
    with pytest.raises(ValueError):
        Reflector(FakeKube(), IMPORTS, KubeStore(FakeKube(), namespace="x"), resync_period=0)
