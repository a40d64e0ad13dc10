"""The assembled Kubernetes backend: what it watches, filling the caches from threads onto the event
loop, leadership reaching the store, and the control plane's --store kubernetes configuration."""

import asyncio

import pytest

from controlplane.server.main import load_config
from controlplane.store import kubeapi as K
from controlplane.store.base import StoreError
from controlplane.store.kube import WATCHED
from controlplane.store.kube_backend import KubeBackend, KubeSettings, parse_selector, selector_text
from tests.unit.kube import rawobjects as R
from tests.unit.kube.fakekube import FakeKube


def backend(api, **kw):
    return KubeBackend(api, KubeSettings(namespace="cl", identity="cp-0", **kw))


def test_reflectors_watch_every_cached_resource_with_least_data():
    b = backend(FakeKube())
    reflectors = {r.resource: r for r in b.reflectors(sink=b.store)}
    assert set(reflectors) == set(WATCHED)
    assert reflectors[K.CLUSTERLINK["Peer"]]._namespace == "cl"  # Peers are read from the ClusterLink namespace
    assert reflectors[K.CLUSTERLINK["Import"]]._namespace is None
    assert reflectors[K.PODS]._namespace == "cl"
    assert reflectors[K.PODS]._labels == "app.kubernetes.io/component=gateway,app.kubernetes.io/name=clusterlink"
    assert reflectors[K.ENDPOINT_SLICES]._labels == "endpointslice.kubernetes.io/managed-by=clusterlink.net"


def test_with_mcs_it_also_watches_service_exports_and_its_own_service_imports():
    from controlplane.store.kube import MCS_WATCHED

    assert backend(FakeKube()).mcs is None
    b = backend(FakeKube(), mcs=True)
    reflectors = {r.resource: r for r in b.reflectors(sink=b.store)}
    assert set(reflectors) == set(WATCHED) | set(MCS_WATCHED)
    assert reflectors[K.SERVICE_EXPORTS]._namespace is None and reflectors[K.SERVICE_EXPORTS]._labels is None
    assert reflectors[K.SERVICE_IMPORTS]._labels == "app.kubernetes.io/managed-by=clusterlink.net"
    assert b.mcs is not None and b.store.mcs


def test_start_fills_the_caches_through_the_loop_and_stop_ends_it():
    api = FakeKube()
    api.put(K.CLUSTERLINK["Import"], R.import_("reviews", "default"))
    api.put(K.PODS, R.gateway_pod("gw-0", "10.244.0.9", namespace="cl"))
    b = backend(api)
    leadership = []
    b.on_leadership(leadership.append)

    async def main():
        await b.start()
        assert b.store.is_synced()
        assert b.store.get("Import", "default", "reviews") is not None
        assert set(b.store.gateway_pods) == {"gw-0"}
        task = asyncio.create_task(b.run_leader_election())
        for _ in range(100):
            if b.store.leader:
                break
            await asyncio.sleep(0.01)
        assert b.store.leader and leadership == [True]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await b.stop()

    asyncio.run(main())
    assert leadership == [True, False] and not b.store.leader


def test_start_times_out_naming_what_could_not_be_listed():
    api = FakeKube()
    for _ in range(1000):
        api.errors[("list", "imports")].append(K.PermanentError("imports.clusterlink.net is forbidden (403)"))
    b = backend(api, sync_timeout=0.3)

    async def main():
        try:
            with pytest.raises(StoreError, match="imports"):
                await b.start()
        finally:
            await b.stop()

    asyncio.run(main())


def test_selectors():
    assert parse_selector("a=b, c=d") == {"a": "b", "c": "d"}
    assert selector_text({"c": "d", "a": "b"}) == "a=b,c=d"
    for bad in ("", "a", "=b"):
        with pytest.raises(ValueError):
            parse_selector(bad)


def test_controlplane_kubernetes_configuration():
    config = load_config(["--certs", "/certs", "--store", "kubernetes", "--gateway-selector", "app=gw",
                          "--lease-name", "cl-leader"])
    assert config.kubernetes and config.vip_range is None  # VIPs are the Services' ClusterIPs
    assert config.gateway_selector == "app=gw" and config.lease_name == "cl-leader"
    assert not load_config(["--certs", "/certs"]).kubernetes
