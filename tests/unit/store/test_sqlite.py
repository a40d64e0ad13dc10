"""The SQLite store: persistence, versions, status-only-on-change, events, secrets."""

import pytest

from controlplane.model.objects import parse_documents
from controlplane.store.base import EventType
from controlplane.store.sqlite import SQLiteStore, parse_url

DOC = """
apiVersion: clusterlink.net/v1alpha1
kind: Export
metadata: {name: reviews, namespace: default, labels: {a: b}}
spec: {port: 9080}
"""


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "state.db")
    yield s
    s.close()


def test_apply_get_list_delete_and_events(store):
    events = []
    store.subscribe(events.append)
    (obj,) = parse_documents(DOC)
    created = store.apply(obj)
    assert created.generation == 1 and created.uid and created.resource_version > 0
    assert store.apply(obj).resource_version == created.resource_version  # unchanged: no new version
    changed = store.apply(obj.with_spec({"port": 9081}))
    assert changed.generation == 2 and changed.uid == created.uid
    assert [e.type for e in events] == [EventType.ADDED, EventType.MODIFIED]
    assert store.list("Export")[0].spec == {"port": 9081}
    assert store.delete("Export", "default", "reviews") and not store.delete("Export", "default", "reviews")
    assert events[-1].type == EventType.DELETED and store.get("Export", "default", "reviews") is None


def test_status_written_only_on_change_and_kept_by_apply(store):
    (obj,) = parse_documents(DOC)
    store.apply(obj)
    status = {"conditions": [{"type": "ExportValid", "status": "True"}]}
    assert store.set_status("Export", "default", "reviews", status)
    assert not store.set_status("Export", "default", "reviews", status)
    assert store.apply(obj.with_spec({"port": 1})).status == status
    assert not store.set_status("Export", "default", "missing", status)


def test_state_survives_reopen(tmp_path):
    s = SQLiteStore(tmp_path / "state.db")
    (obj,) = parse_documents(DOC)
    s.apply(obj)
    key = s.secret("token-key")
    token = s.token("join-token")
    s.close()
    s = SQLiteStore(tmp_path / "state.db")
    assert s.get("Export", "default", "reviews").labels == {"a": "b"}
    assert s.secret("token-key") == key and len(key) == 32
    assert s.token("join-token") == token and s.token("admin-token") != token and token.isascii()
    s.close()


def test_a_failing_listener_does_not_break_the_store(store, caplog):
    def bad(_):
        raise RuntimeError("boom")

    store.subscribe(bad)
    (obj,) = parse_documents(DOC)
    store.apply(obj)
    assert store.get("Export", "default", "reviews") is not None
    assert "store listener" in caplog.text


def test_url_parsing():
    assert str(parse_url("sqlite:///var/lib/x.db")) == "/var/lib/x.db"
    with pytest.raises(ValueError, match="sqlite://"):
        parse_url("postgres://x")
