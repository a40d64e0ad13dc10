"""The Kubernetes store, driven by raw watch events: its cache, its events, and the writes it makes
through (a fake of) the wrapper."""

import base64
import logging

import pytest

from controlplane.store import kubeapi as K
from controlplane.store.base import EventType, StoreError
from controlplane.store.kube import WATCHED, KubeStore, merge_patch
from tests.unit.kube import rawobjects as R
from tests.unit.kube.fakekube import FakeKube

IMPORTS = K.CLUSTERLINK["Import"]
EXPORTS = K.CLUSTERLINK["Export"]
PEERS = K.CLUSTERLINK["Peer"]
POLICIES = K.CLUSTERLINK["AccessPolicy"]


@pytest.fixture
def api():
    return FakeKube()


@pytest.fixture
def store(api):
    s = KubeStore(api, namespace="clusterlink-system")
    s.leader = True
    return s


def recorded(store):
    events = []
    store.subscribe(events.append)
    return events


def kinds(events):
    return [(e.type, e.obj.kind, e.obj.name) for e in events]


def test_added_modified_deleted_become_store_events(store):
    events = recorded(store)
    store.handle_event(IMPORTS, "ADDED", R.import_(rv=10))
    store.handle_event(IMPORTS, "MODIFIED", R.import_(rv=11, port=9081))
    store.handle_event(IMPORTS, "DELETED", R.import_(rv=12, port=9081))
    assert kinds(events) == [(EventType.ADDED, "Import", "reviews"), (EventType.MODIFIED, "Import", "reviews"),
                             (EventType.DELETED, "Import", "reviews")]
    assert events[1].obj.spec["port"] == 9081
    assert events[0].obj.spec["lbScheme"] == "round-robin"  # the model's default, applied to the cached object
    assert store.get("Import", "default", "reviews") is None


def test_a_modification_that_changes_nothing_wakes_nobody(store):
    events = recorded(store)
    store.handle_event(IMPORTS, "ADDED", R.import_(rv=10))
    store.handle_event(IMPORTS, "MODIFIED", R.import_(rv=11))  # e.g. only managedFields changed
    assert len(events) == 1 and store.get("Import", "default", "reviews").resource_version == 11


def test_a_relist_reports_only_differences(store):
    events = recorded(store)
    store.handle_list(IMPORTS, [R.import_("a", rv=10), R.import_("b", rv=11)])
    assert kinds(events) == [(EventType.ADDED, "Import", "a"), (EventType.ADDED, "Import", "b")]
    events.clear()
    store.handle_list(IMPORTS, [R.import_("a", rv=10), R.import_("c", rv=13)])  # b vanished while we were away
    assert sorted(kinds(events), key=str) == [(EventType.ADDED, "Import", "c"), (EventType.DELETED, "Import", "b")]
    events.clear()
    store.handle_list(IMPORTS, [R.import_("a", rv=10), R.import_("c", rv=13)])  # resync: nothing new
    assert events == []


def test_recreated_object_with_a_new_uid_is_deleted_then_added(store):
    events = recorded(store)
    store.handle_event(IMPORTS, "ADDED", R.import_(rv=10, uid="one"))
    store.handle_event(IMPORTS, "ADDED", R.import_(rv=20, uid="two"))
    assert [e.type for e in events] == [EventType.ADDED, EventType.DELETED, EventType.ADDED]
    assert store.get("Import", "default", "reviews").uid == "two"


def test_object_rejected_by_the_model_is_left_out_and_logged_once(store, caplog):
    bad = R.policy("ws")
    bad["spec"]["from"] = [{"workloadSets": ["x"]}]
    with caplog.at_level(logging.ERROR):
        store.handle_event(POLICIES, "ADDED", bad)
        store.handle_event(POLICIES, "MODIFIED", bad)
    assert store.get("AccessPolicy", "default", "ws") is None
    assert store.exists("AccessPolicy", "default", "ws")
    errors = [r for r in caplog.records if "AccessPolicy default/ws is invalid" in r.getMessage()]
    assert len(errors) == 1 and "workloadSets" in errors[0].getMessage()
    fixed = R.policy("ws")
    store.handle_event(POLICIES, "MODIFIED", fixed)
    assert store.get("AccessPolicy", "default", "ws") is not None and not store.invalid()


def test_cluster_scoped_and_standalone_kinds(store):
    pap = R.policy("deny-all", None)
    pap["kind"] = "PrivilegedAccessPolicy"
    store.handle_event(K.CLUSTERLINK["PrivilegedAccessPolicy"], "ADDED", pap)
    assert store.get("PrivilegedAccessPolicy", "", "deny-all").namespace == ""
    assert store.list("Workload") == [] and store.list("LocalService") == []


def test_synced_only_after_every_watched_resource_was_listed(store):
    for resource in WATCHED[:-1]:
        store.handle_list(resource, [])
    assert not store.is_synced()
    store.handle_list(WATCHED[-1], [])
    assert store.is_synced()


# -- status writes --------------------------------------------------------------------------------


def seeded(api, store, resource, raw):
    stored = api.put(resource, raw)
    store.handle_event(resource, "ADDED", stored)
    return stored


def test_status_is_written_once_and_only_when_it_changes(api, store):
    seeded(api, store, EXPORTS, R.export())
    status = {"conditions": [{"type": "ExportValid", "status": "True", "reason": "Verified", "message": "",
                              "lastTransitionTime": "2024-01-01T00:00:00Z"}]}
    assert store.set_status("Export", "default", "reviews", status)
    assert not store.set_status("Export", "default", "reviews", status)  # the cache already has it (write-through)
    assert [w[0] for w in api.writes] == ["patch_status"]
    assert store.get("Export", "default", "reviews").status == status


def test_status_patch_removes_keys_explicitly(api, store):
    seeded(api, store, IMPORTS, R.import_(status={"vip": "10.96.0.9", "conditions": []}))
    assert store.set_status("Import", "default", "reviews", {"conditions": []})
    assert api.writes[-1][4] == {"vip": None}
    assert "vip" not in api.find(IMPORTS, "default", "reviews")["status"]


def test_a_stale_watch_event_after_our_write_does_not_roll_the_cache_back(api, store):
    before = seeded(api, store, EXPORTS, R.export())
    status = {"conditions": []}
    store.set_status("Export", "default", "reviews", status)
    store.handle_event(EXPORTS, "MODIFIED", before)  # delayed event from before our write
    assert store.get("Export", "default", "reviews").status == status


def test_followers_never_write(api, store):
    seeded(api, store, EXPORTS, R.export())
    store.leader = False
    assert not store.set_status("Export", "default", "reviews", {"conditions": []})
    obj = store.get("Export", "default", "reviews")
    assert store.update_spec(obj, {"port": 1}) is None
    assert api.writes == []


def test_status_of_a_vanished_object_is_not_an_error(api, store):
    store.handle_event(EXPORTS, "ADDED", R.export())  # in the cache, but not in the cluster any more
    assert not store.set_status("Export", "default", "reviews", {"conditions": []})


def test_temporary_status_failure_raises_for_a_retry(api, store):
    seeded(api, store, EXPORTS, R.export())
    api.errors[("patch_status", "exports")].append(K.TemporaryError("writing: connection refused"))
    with pytest.raises(StoreError, match="connection refused"):
        store.set_status("Export", "default", "reviews", {"conditions": []})
    assert store.set_status("Export", "default", "reviews", {"conditions": []})  # the retry writes


def test_permanent_status_failure_is_reported_and_dropped(api, store, caplog):
    seeded(api, store, EXPORTS, R.export())
    api.errors[("patch_status", "exports")].append(K.PermanentError("exports/status is forbidden (403)", status=403))
    with caplog.at_level(logging.ERROR):
        assert not store.set_status("Export", "default", "reviews", {"conditions": []})
    assert store.write_errors == 1
    assert any("Export default/reviews" in r.getMessage() and "forbidden" in r.getMessage() for r in caplog.records)


# -- spec write-back, apply, delete ---------------------------------------------------------------


def test_spec_write_back_carries_uid_and_resource_version_preconditions(api, store):
    stored = seeded(api, store, IMPORTS, R.import_())
    obj = store.get("Import", "default", "reviews")
    updated = store.update_spec(obj, {**obj.spec, "targetPort": 5000})
    assert updated.spec["targetPort"] == 5000 and updated.generation == 2
    (verb, _, _, _, patch), = api.writes
    assert verb == "patch" and patch["spec"] == {"targetPort": 5000}
    assert patch["metadata"] == {"uid": stored["metadata"]["uid"],
                                 "resourceVersion": stored["metadata"]["resourceVersion"]}


def test_spec_write_back_loses_to_a_concurrent_user_edit(api, store):
    seeded(api, store, IMPORTS, R.import_())
    obj = store.get("Import", "default", "reviews")
    api.patch(IMPORTS, "default", "reviews", {"spec": {"port": 1234}})  # the user edits; our cache lags
    assert store.update_spec(obj, {**obj.spec, "targetPort": 5000}) is None
    assert "targetPort" not in api.find(IMPORTS, "default", "reviews")["spec"]


def test_apply_creates_then_patches_and_delete_deletes(api, store):
    from controlplane.model.objects import parse_documents

    (obj,) = parse_documents("apiVersion: clusterlink.net/v1alpha1\nkind: Export\n"
                             "metadata: {name: e, namespace: ns, labels: {a: b}}\nspec: {port: 80}\n")
    created = store.apply(obj)
    assert created.uid and api.find(EXPORTS, "ns", "e")["metadata"]["labels"] == {"a": "b"}
    changed = obj.with_spec({**obj.spec, "port": 81})  # keeps the defaulted fields (protocol: TCP), as parsed
    store.apply(changed)
    assert api.writes[-1][0] == "patch" and api.writes[-1][4] == {"spec": {"port": 81}}
    assert store.apply(changed).spec["port"] == 81 and len(api.writes) == 2  # unchanged
    assert store.delete("Export", "ns", "e") and store.get("Export", "ns", "e") is None
    assert not store.delete("Export", "ns", "e")
    with pytest.raises(StoreError, match="standalone"):
        store.delete("Workload", "ns", "w")


# -- the token key Secret -------------------------------------------------------------------------


def test_secret_is_created_once_and_then_read(api, store):
    key = store.secret("token-key")
    assert len(key) == 32
    raw = api.find(K.SECRETS, "clusterlink-system", "clusterlink-token-key")
    assert base64.b64decode(raw["data"]["value"]) == key
    assert store.secret("token-key") == key
    assert len(api.writes_of("create")) == 1


def test_secret_created_concurrently_by_another_replica_is_read(api, store):
    theirs = b"x" * 32

    class Racing(FakeKube):
        def create(self, resource, namespace, body):
            self.put(resource, {"metadata": {"name": body["metadata"]["name"], "namespace": namespace},
                                "data": {"value": base64.b64encode(theirs).decode()}})
            return super().create(resource, namespace, body)

    racing = KubeStore(Racing(), namespace="clusterlink-system")
    assert racing.secret("token-key") == theirs


def test_tokens_are_text_secrets_that_pods_can_mount(api, store):
    """--tokens store: Secret clusterlink-join-token, key `token`, the token as text (a gateway
    mounting it reads exactly the token the control plane checks); made once."""
    token = store.token("join-token")
    raw = api.find(K.SECRETS, "clusterlink-system", "clusterlink-join-token")
    assert base64.b64decode(raw["data"]["token"]).decode() == token and len(token) >= 40
    assert token.isascii() and token.strip() == token
    assert store.token("join-token") == token and store.token("admin-token") != token
    assert len(api.writes_of("create")) == 2


def test_a_token_secret_without_its_key_is_a_clear_error(api, store):
    api.put(K.SECRETS, {"metadata": {"name": "clusterlink-admin-token", "namespace": "clusterlink-system"},
                        "data": {"value": "eA=="}})
    with pytest.raises(StoreError, match="clusterlink-admin-token has no 'token' key"):
        store.token("admin-token")


def test_secret_read_failure_is_a_store_error(api, store):
    api.errors[("get", "secrets")].append(K.PermanentError("secrets is forbidden (403)", status=403))
    with pytest.raises(StoreError, match="forbidden"):
        store.secret("token-key")


# -- cluster changes ------------------------------------------------------------------------------


def test_service_changes_wake_the_reconciler_only_when_they_matter(store):
    woken = []
    store.on_cluster_change(lambda: woken.append(1))
    store.handle_event(EXPORTS, "ADDED", R.export("reviews"))
    store.handle_event(K.SERVICES, "ADDED", R.service("unrelated"))
    assert woken == []
    store.handle_event(K.SERVICES, "ADDED", R.service("reviews"))  # the Export's target appears
    assert woken == [1]
    store.handle_event(K.SERVICES, "MODIFIED", R.service("reviews"))  # same content
    assert woken == [1]
    store.handle_event(K.SERVICES, "DELETED", R.service("reviews"))
    assert woken == [1, 1] and ("default", "reviews") not in store.services
    store.handle_event(K.PODS, "ADDED", R.gateway_pod("gw-1", "10.244.0.5"))
    assert woken == [1, 1, 1] and store.gateway_pods["gw-1"].ready


def test_merge_patch():
    assert merge_patch({"a": 1, "b": {"c": 1, "d": 2}, "e": [1]}, {"a": 1, "b": {"c": 2}, "e": [2], "f": 3}) == {
        "b": {"c": 2, "d": None}, "e": [2], "f": 3}
    assert merge_patch({"x": 1}, {"x": 1}) == {}
