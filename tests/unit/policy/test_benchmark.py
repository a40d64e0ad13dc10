"""The policy benchmark module: its contract with the project's benchmark harness."""

from __future__ import annotations

import pytest

from controlplane.policy.benchmark import generate_policies, generate_requests, main, measure_decision_time
from controlplane.policy.engine import PolicyEngine


def test_measure_decision_time_shape():
    result = measure_decision_time(50, decisions=300, seed=3)
    assert result["n_policies"] == 50 and result["decisions"] == 300
    for mode in ("hit", "miss", "uncached"):
        figures = result["cache"][mode]
        assert set(figures) == {"p50_us", "p99_us", "mean_us"}
        assert 0 < figures["p50_us"] <= figures["p99_us"]
        for name, value in figures.items():
            assert result[f"{mode}_{name}"] == value
    assert result["p99_us"] == result["miss_p99_us"]
    assert 0 <= result["allowed_fraction"] <= 1


def test_generated_policies_are_deterministic_and_mixed():
    policies = generate_policies(400, seed=1)
    assert len(policies) == 400
    assert generate_policies(400, seed=1) == policies
    assert any(p.privileged for p in policies) and any(not p.privileged for p in policies)
    assert any(p.depends_on_client_attributes for p in policies)
    assert any(all(s.is_empty for s in p.to + p.from_) for p in policies)
    engine = PolicyEngine()
    engine.replace_all(policies)
    decisions = [engine.decide(*r) for r in generate_requests(400, 500, seed=1)]
    assert any(d.allowed for d in decisions) and any(not d.allowed for d in decisions)


def test_bounds():
    with pytest.raises(ValueError):
        measure_decision_time(10, decisions=0)
    with pytest.raises(ValueError):
        generate_policies(-1)


def test_main_prints_a_table(capsys):
    assert main(["5", "20", "--decisions", "100"]) == 0
    out = capsys.readouterr().out
    assert "p99 us" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("5 ", "20 "))]) == 6


def test_timing_runs_with_set_up_frozen_and_no_collections():
    """As in the gateway worker: what set-up built is frozen while timing, the collector stays on,
    and decisions leave it nothing to do (no pass during any timed mode)."""
    import gc

    assert gc.get_freeze_count() == 0 and gc.isenabled()
    result = measure_decision_time(300, decisions=3000, seed=1)
    assert result["gc"]["frozen_objects"] > 3000  # at least the generated requests
    assert result["gc"]["collections"] == {"hit": 0, "miss": 0, "uncached": 0}
    assert gc.get_freeze_count() == 0 and gc.isenabled()  # the caller's state is back


def test_a_caller_that_froze_its_objects_keeps_them_frozen():
    import gc

    keep = [[i] for i in range(1000)]
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        measure_decision_time(20, decisions=200)
        assert gc.get_freeze_count() >= before
    finally:
        gc.unfreeze()
    del keep
