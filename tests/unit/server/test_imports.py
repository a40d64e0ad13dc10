"""Import target-port and VIP planning."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.model.objects import Object
from controlplane.server.imports import VipPool, plan_imports

RESERVED = {443: "peer listener", 4443: "agent listener"}


def imp(name, target=0, created="2024-01-01T00:00:00Z", vip="", rv=1):
    spec = {"port": 80, "sources": [{"peer": "p", "exportName": "e", "exportNamespace": "ns"}],
            "lbScheme": "round-robin"}
    if target:
        spec["targetPort"] = target
    return Object(kind="Import", name=name, namespace="default", spec=spec, status={"vip": vip} if vip else {},
                  creation_timestamp=created, resource_version=rv)


def plans(imports, pool=None, seed=0):
    return {p.key.name: p for p in plan_imports(imports, reserved=RESERVED, vip_pool=pool, rng=random.Random(seed))}


def test_auto_lease_is_in_range_and_written_back():
    p = plans([imp("a")])["a"]
    assert 1024 <= p.target_port < 49152 and p.write_back and p.port_condition.ok
    assert p.port_condition.reason == "Leased"


def test_explicit_port_kept_and_conflict_goes_to_the_newer_import():
    got = plans([imp("new", 5000, created="2024-02-01T00:00:00Z"), imp("old", 5000)])
    assert got["old"].target_port == 5000 and got["old"].port_condition.ok and not got["old"].write_back
    assert not got["new"].port_condition.ok and got["new"].target_port == 0
    assert got["new"].port_condition.reason == "Error"
    assert "already leased by import default/old" in got["new"].port_condition.message


def test_reserved_gateway_port_is_a_conflict():
    p = plans([imp("a", 443)])["a"]
    assert not p.port_condition.ok and "peer listener" in p.port_condition.message


def test_auto_lease_never_takes_an_explicit_port_of_a_newer_import():
    # the random source would pick 5000 first; it must skip it because "b" asked for it
    class Fixed(random.Random):
        def __init__(self):
            super().__init__(0)
            self.seq = [5000, 6000]

        def randrange(self, *a):
            return self.seq.pop(0)

    got = {p.key.name: p for p in plan_imports([imp("a"), imp("b", 5000, created="2025-01-01T00:00:00Z")],
                                               reserved=RESERVED, vip_pool=None, rng=Fixed())}
    assert got["b"].target_port == 5000 and got["a"].target_port == 6000


def test_vips_are_stable_and_unique():
    pool = VipPool("10.96.0.0/29")
    got = plans([imp("a"), imp("b", created="2024-03-01T00:00:00Z")], pool)
    assert got["a"].vip == "10.96.0.1" and got["b"].vip == "10.96.0.2"
    # "a" keeps the VIP it holds even when a lower one is free
    got = plans([imp("a", vip="10.96.0.5"), imp("b", created="2024-03-01T00:00:00Z")], pool)
    assert got["a"].vip == "10.96.0.5" and got["b"].vip == "10.96.0.1"


def test_vip_range_exhausted():
    pool = VipPool("10.96.0.0/30")  # 2 usable
    got = plans([imp(n, created=f"2024-01-0{i + 1}T00:00:00Z") for i, n in enumerate("abc")], pool)
    assert got["c"].vip == "" and not got["c"].service_condition.ok
    assert "no free service address" in got["c"].service_condition.message


@settings(max_examples=100)
@given(st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=12), st.integers(0, 1000))
def test_leased_ports_are_unique(ports, seed):
    imports = [imp(f"i{i}", 40000 + p if p else 0, created=f"2024-01-01T00:00:{i:02d}Z") for i, p in enumerate(ports)]
    got = plan_imports(imports, reserved=RESERVED, vip_pool=VipPool("10.96.0.0/24"), rng=random.Random(seed))
    valid = [p.target_port for p in got if p.port_condition.ok]
    assert len(valid) == len(set(valid))
    vips = [p.vip for p in got]
    assert len(vips) == len(set(vips))
