"""The failover figures computed from an http-load log (fabric.faults)."""

from __future__ import annotations

import json

from fabric.faults import MIN_SLOW, FaultTime, Outcome, before_fault, parse_load, recovery


def _line(start: float, seconds: float, code: int = 0, server: str = "a") -> str:
    return json.dumps({"start": start, "end": start + seconds, "code": code, "server": server})


def test_parse_skips_other_lines_and_sorts_by_start() -> None:
    text = "\n".join(["http-load ready", _line(2.0, 0.01), _line(1.0, 0.01, 4, "x"), '{"start": 3', "junk"])
    assert parse_load(text) == [Outcome(1.0, 1.01, 4, "x"), Outcome(2.0, 2.01, 0, "a")]


def test_no_disturbance_is_zero_recovery() -> None:
    outcomes = [Outcome(t / 100, t / 100 + 0.005, 0, "ab"[t % 2]) for t in range(300)]
    r = recovery(outcomes, 1.0)
    assert (r.recovery, r.failed, r.failed_new, r.disturbed) == (0.0, 0, 0, 0)
    assert r.slow == MIN_SLOW
    assert r.servers_after == {"a": 100, "b": 100}


def test_a_slow_and_a_failed_connection_set_the_recovery() -> None:
    before = [Outcome(t / 100, t / 100 + 0.03, 0, "a") for t in range(100)]  # median 30 ms: slow = 0.3 s
    in_flight = Outcome(0.995, 1.3, 4, "reset")  # in flight at the fault, lost
    waited = Outcome(1.31, 1.95, 0, "b")  # waited 0.64 s for the dead peer, then served by b
    after = [Outcome(1.96 + t / 100, 1.96 + t / 100 + 0.02, 0, "b") for t in range(50)]
    after[10] = Outcome(after[10].start, after[10].start + 0.28, 0, "b")  # under the threshold: not disturbed
    late_blip = Outcome(20.0, 21.0, 0, "b")  # after the window: not this fault's doing
    r = recovery(before + [in_flight, waited] + after + [late_blip], 1.0)
    assert abs(r.slow - 0.3) < 1e-9
    assert (r.failed, r.failed_new, r.disturbed) == (1, 0, 1)  # the one in flight is lost, not disturbed
    assert abs(r.recovery - 0.95) < 1e-9
    assert r.servers_after == {"b": 50}
    assert r.failures == ["4: reset"]
    assert r.connections == 51  # started after the fault, within the window (not the one in flight)


def test_a_failed_new_connection_counts_as_disturbed() -> None:
    before = [Outcome(t / 100, t / 100 + 0.005, 0, "a") for t in range(100)]
    r = recovery(before + [Outcome(1.2, 1.21, 4, "reset"), Outcome(1.3, 1.31, 0, "b")], 1.0)
    assert (r.failed, r.failed_new, r.disturbed) == (1, 1, 1)
    assert abs(r.recovery - 0.21) < 1e-9
    assert r.servers_after == {"b": 1}


def test_a_reset_while_the_kill_is_reaped_is_the_faults_doing() -> None:
    """A connection in flight in the killed gateway can end (reset) before the kill returned: it was
    hit by the fault, not a failure before it, and it did not start after the fault."""
    before = [Outcome(t / 100, t / 100 + 0.005, 0, "ab"[t % 2]) for t in range(100)]
    reset = Outcome(0.998, 1.001, 4, "reset")  # ended after the SIGKILL, before the reap returned
    after = [Outcome(1.01 + t / 100, 1.015 + t / 100, 0, "b") for t in range(20)]
    fault = FaultTime(injected=1.0, in_effect=1.003)
    assert {o.server for o in before_fault(before + [reset] + after, fault)} == {"a", "b"}
    r = recovery(before + [reset] + after, fault)
    assert (r.failed, r.failed_new, r.disturbed) == (1, 0, 0)
    assert r.failures == ["4: reset"]
    assert r.servers_after == {"b": 20}
    # One moment for both (as before): the same reset would look like a failure before the fault.
    assert "reset" in {o.server for o in before_fault(before + [reset], fault.in_effect)}
