"""The agent's answer to the proxy (`Agent.resolve`) and the route cache behind it: a client's
second connection to a service costs no cgroup or workload lookup and no encoding, yet every
change of snapshot, credential or pod is seen by the next connection, and every connection is
still counted. A fake datapath stands in for BPF (no privileges needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.datapath.datapath import ReconcileResult, Redirect
from agent.main import Agent, Config
from agent.metrics import AgentMetrics
from agent.routes import RouteCache
from controlplane.api import clusterlink_pb2 as pb
from controlplane.api.preamble import HEADER, decode_body

VIP = ("10.96.0.3", 7000)
CLIENT = ("10.1.1.2", 40000)
POD_CGROUP = "/pods/client"
POD_ID = 4242


class FakeDatapath:
    """Redirect records the test plants; counts the cgroup path lookups."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], Redirect] = {}
        self.paths = {POD_ID: POD_CGROUP}
        self.path_lookups = 0

    def plant(self, client: tuple[str, int] = CLIENT, vip: tuple[str, int] = VIP, cgroup_id: int = POD_ID) -> None:
        self.records[client] = Redirect(vip[0], vip[1], cgroup_id)

    def lookup(self, ip: str, port: int) -> Redirect | None:
        return self.records.pop((ip, port), None)

    def cgroup_path_for_id(self, cgroup_id: int) -> str | None:
        self.path_lookups += 1
        return self.paths.get(cgroup_id)

    def reconcile(self, services, udp=None) -> ReconcileResult:  # type: ignore[no-untyped-def]
        return ReconcileResult(0, 0, 0)


def snapshot(version: int, labels: dict[str, str], *, gateway: str = "10.201.0.1:4443") -> pb.Snapshot:
    return pb.Snapshot(version=version, peer_name="east", gateway_agent_address=gateway,
                       imports=[pb.ImportInfo(namespace="default", name="echo", port=VIP[1], vip=VIP[0])],
                       workloads=[pb.WorkloadInfo(cgroup=POD_CGROUP, namespace="default", name="client",
                                                  service_account="sa", labels=labels)])


def make_agent() -> tuple[Agent, FakeDatapath, AgentMetrics]:
    config = Config(node="n1", cgroup="/x", controlplane="unix:/x", join_token_file=Path("/x"),
                    controlplane_ca=None, server_name="", proxy_address="10.1.1.1", proxy_port=15001,
                    proxy_interface="", metrics_listen=None, workloads="standalone", log_level="info",
                    log_format="text")
    datapath, metrics = FakeDatapath(), AgentMetrics()
    agent = Agent(config, datapath, metrics)
    agent.apply_snapshot(snapshot(1, {"app": "web"}))
    agent.credential = "credential-1"
    return agent, datapath, metrics


def resolve(agent: Agent, datapath: FakeDatapath, **plant) -> tuple[tuple[str, int], dict] | None:  # type: ignore[no-untyped-def]
    datapath.plant(**plant)
    upstream = agent.resolve(CLIENT)
    if upstream is None:
        return None
    _, length = HEADER.unpack_from(upstream.preamble)
    p = decode_body(upstream.preamble[HEADER.size:HEADER.size + length])
    return upstream.address, {"import": (p.import_namespace, p.import_name), "dst": p.destination,
                              "client": dict(p.client), "credential": p.credential, "node": p.node}


def count(metrics: AgentMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_second_connection_reuses_the_route() -> None:
    agent, datapath, metrics = make_agent()
    first = resolve(agent, datapath)
    second = resolve(agent, datapath)
    assert first == second
    address, preamble = first  # type: ignore[misc]
    assert address == ("10.201.0.1", 4443)
    assert preamble == {"import": ("default", "echo"), "dst": "10.96.0.3:7000", "credential": "credential-1",
                        "node": "n1", "client": {"client.clusterlink.net/namespace": "default",
                                                 "client.clusterlink.net/service-account": "sa",
                                                 "client.clusterlink.net/labels.app": "web"}}
    assert datapath.path_lookups == 1 and len(agent.routes) == 1
    assert count(metrics, "clusterlink_agent_redirected_connections_total", **{"import": "default/echo"}) == 2


def test_a_new_snapshot_is_seen_by_the_next_connection() -> None:
    agent, datapath, _ = make_agent()
    resolve(agent, datapath)
    agent.apply_snapshot(snapshot(2, {"app": "db"}, gateway="10.201.0.9:4443"))
    address, preamble = resolve(agent, datapath)  # type: ignore[misc]
    assert preamble["client"]["client.clusterlink.net/labels.app"] == "db"
    assert address == ("10.201.0.9", 4443)


def test_a_renewed_credential_is_sent_by_the_next_connection() -> None:
    agent, datapath, _ = make_agent()
    resolve(agent, datapath)
    agent.credential = "credential-2"
    _, preamble = resolve(agent, datapath)  # type: ignore[misc]
    assert preamble["credential"] == "credential-2"


def test_a_pod_change_is_seen_by_the_next_connection_in_kubernetes_mode() -> None:
    class Pod:
        def __init__(self, labels: dict[str, str]) -> None:
            self.namespace, self.service_account, self.labels = "prod", "api", labels

    class Resolver:
        generation = 1
        pod = Pod({"tier": "a"})

        def resolve(self, path: str) -> Pod | None:
            return self.pod if path == POD_CGROUP else None

    agent, datapath, _ = make_agent()
    agent.workload_resolver = resolver = Resolver()
    assert resolve(agent, datapath)[1]["client"]["client.clusterlink.net/labels.tier"] == "a"  # type: ignore[index]
    resolver.pod = Pod({"tier": "b"})  # relabelled: the pod index moves to a new generation
    resolver.generation = 2
    assert resolve(agent, datapath)[1]["client"]["client.clusterlink.net/labels.tier"] == "b"  # type: ignore[index]


def test_unknown_clients_are_counted_on_every_connection() -> None:
    agent, datapath, metrics = make_agent()
    datapath.paths[7] = "/elsewhere"  # a cgroup with no workload: cached, but counted every time
    for _ in range(3):
        assert resolve(agent, datapath, cgroup_id=7)[1]["client"] == {}  # type: ignore[index]
    assert count(metrics, "clusterlink_agent_identity_lookup_failures_total", reason="no-workload") == 3
    assert datapath.path_lookups == 1
    for _ in range(2):  # a cgroup id nobody knows (gone already): asked again each time, never cached
        assert resolve(agent, datapath, cgroup_id=99)[1]["client"] == {}  # type: ignore[index]
    assert count(metrics, "clusterlink_agent_identity_lookup_failures_total", reason="unknown-cgroup") == 2
    assert datapath.path_lookups == 3


def test_connections_that_cannot_be_routed_are_refused_and_counted() -> None:
    agent, datapath, metrics = make_agent()
    assert agent.resolve(CLIENT) is None  # no redirect record
    assert resolve(agent, datapath, vip=("10.96.0.4", 80)) is None  # not an import
    assert count(metrics, "clusterlink_agent_lookup_failures_total", reason="no-redirect-record") == 1
    assert count(metrics, "clusterlink_agent_lookup_failures_total", reason="unknown-import") == 1


def test_route_cache_generations_and_bound() -> None:
    cache: RouteCache[str] = RouteCache(max_entries=2)
    cache.put(("v", 1, 1), "g1", "a")
    assert cache.get(("v", 1, 1), "g1") == "a"
    assert cache.get(("v", 1, 1), "g2") is None and len(cache) == 0  # another generation: emptied
    cache.put(("v", 1, 1), "g2", "a")
    cache.put(("v", 1, 2), "g2", "b")
    cache.put(("v", 1, 3), "g2", "c")  # full: starts over
    assert len(cache) == 1 and cache.get(("v", 1, 3), "g2") == "c"
    with pytest.raises(ValueError):
        RouteCache(max_entries=0)

