"""What a fault did to a stream of new connections: the failover figures of the tests and the benchmark.

`measure` runs one: it starts `http-load` in a client pod, injects a fault into a peer's gateway
after a while (`kill`: kill -9 of its process group; `freeze`: SIGSTOP; `partition`: its WAN
packets dropped, both ways), puts it right when the load is over (restart, SIGCONT, heal) and
returns the connections and the moment of the fault.

Input of the figures: the lines `python -m fabric.workloads http-load` printed (one JSON object per connection:
`start`, `end` in CLOCK_MONOTONIC seconds, which every process of the machine shares, `code` an
EXIT_* value, `server` the echoing server's name) and the moment the fault was injected.

The fault has two moments (`FaultTime`): `injected`, taken just before the injection began, and
`in_effect`, when it returned (a kill reaped, the drop rules loaded). A connection that ended before
`injected` ran *before the fault*; one that ended after it can have been hit by it (a kill's resets
come while it is being reaped). A *new* connection is one that started after `in_effect`. It is *disturbed* when it failed, or when it took longer than `slow` (default:
ten times the median of the connections that ended before the fault, at least `MIN_SLOW` seconds):
it waited for the faulty peer before going elsewhere. *Recovery* is the time from the fault to the
end of the last disturbed new connection that started within `window` seconds after it (0 when none
was): from then on every new connection succeeded at its usual speed. `failed` counts every failure
from the fault on, the connections in flight inside the faulty peer included (bytes the service may
have acted on cannot be replayed elsewhere: they are reset, a frozen or cut-off peer's after the
tunnel liveness timeout); `failed_new` only the new ones. Several clients (`http-load
--concurrency`) keep new connections coming while one of them hangs on such an in-flight one.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fabric.peer import Peer, Pod

FAULTS = ("kill", "freeze", "partition")

# Seconds: below this a slow connection is scheduling noise on a busy 2-core machine (three peers'
# processes and the load), not a failover; waiting for a frozen peer lasts at least a probe interval
# plus part of the probe timeout (0.25 s + 0.5 s by default), and a failure counts whatever its time.
MIN_SLOW = 0.25


@dataclass(frozen=True)
class Outcome:
    start: float
    end: float
    code: int
    server: str

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class FaultTime:
    injected: float  # just before the injection began
    in_effect: float  # when it had returned

    @classmethod
    def at(cls, moment: "FaultTime | float") -> "FaultTime":
        return moment if isinstance(moment, FaultTime) else cls(moment, moment)


@dataclass
class Recovery:
    recovery: float  # seconds from the fault to the end of the last disturbed connection
    failed: int  # connections that failed from the fault on (in flight at the fault included)
    failed_new: int  # of them, those that started after the fault
    disturbed: int  # failed or slow ones
    slow: float  # the threshold used
    connections: int  # started after the fault (within the window)
    servers_after: Counter[str] = field(default_factory=Counter)  # who answered after the recovery
    failures: list[str] = field(default_factory=list)  # what the failed ones said (the first few)
    # the first few disturbed ones: "+<start after the fault> s <seconds> s <code> <server>"
    disturbances: list[str] = field(default_factory=list)


def parse_load(text: str) -> list[Outcome]:
    """The connections in an http-load log (other lines are ignored), in the order they started."""
    out = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
            out.append(Outcome(float(d["start"]), float(d["end"]), int(d["code"]), str(d["server"])))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short when the load was stopped
    return sorted(out, key=lambda o: o.start)


def recovery(outcomes: list[Outcome], fault: FaultTime | float, *, window: float = 10.0,
             slow: float | None = None) -> Recovery:
    """The failover figures of `outcomes` around a fault (its `FaultTime`, or one moment for both; see
    the module docstring)."""
    t = FaultTime.at(fault)
    before = [o.seconds for o in outcomes if o.end < t.injected and o.ok]
    if slow is None:
        slow = max(MIN_SLOW, 10 * statistics.median(before)) if before else MIN_SLOW
    relevant = [o for o in outcomes if o.end >= t.injected and o.start < t.in_effect + window]
    new = [o for o in relevant if o.start >= t.in_effect]
    failed = [o for o in relevant if not o.ok]
    disturbed = [o for o in new if not o.ok or o.seconds > slow]
    last = max((o.end for o in disturbed), default=t.in_effect)
    after = Counter(o.server for o in new if o.start >= last and o.ok)
    return Recovery(recovery=max(0.0, last - t.in_effect), failed=len(failed), failed_new=sum(1 for o in new if not o.ok),
                    disturbed=len(disturbed), slow=slow, connections=len(new), servers_after=after,
                    failures=[f"{o.code}: {o.server}" for o in failed[:5]],
                    disturbances=[f"{o.start - t.in_effect:+.3f} s {o.seconds:.3f} s {o.code} {o.server}"
                                  for o in disturbed[:5]])


def before_fault(outcomes: list[Outcome], fault: FaultTime | float) -> list[Outcome]:
    """The connections that ended before the fault was injected (none of them can have been hit by it)."""
    t = FaultTime.at(fault)
    return [o for o in outcomes if o.end < t.injected]


def inject(peer: Peer, fault: str) -> None:
    {"kill": peer.kill_gateway, "freeze": peer.freeze_gateway, "partition": peer.partition}[fault]()


def undo(peer: Peer, fault: str) -> None:
    """Put the fault right: the gateway restarted (kill), continued (freeze), the link healed (partition)."""
    if fault == "kill":
        peer.start_gateway()
    elif fault == "freeze":
        peer.thaw_gateway()
    elif fault == "partition":
        peer.heal()
    else:
        raise ValueError(f"unknown fault {fault!r} (want one of {', '.join(FAULTS)})")


def measure(client: Pod, url: str, peer: Peer, fault: str, *, load_s: float, fault_after: float,
            interval: float = 0.01, concurrency: int = 4, timeout: float = 15.0) -> tuple[list[Outcome], FaultTime]:
    """New connections to `url` from `client` for `load_s` seconds, `fault` injected into `peer`
    `fault_after` seconds in (and undone after the load): the connections and the fault's time."""
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r} (want one of {', '.join(FAULTS)})")
    if not 0 < fault_after < load_s:
        raise ValueError("the fault must come after the load started and before it ends")
    load = client.spawn([sys.executable, "-m", "fabric.workloads", "http-load", url, "--duration", str(load_s),
                         "--interval", str(interval), "--concurrency", str(concurrency), "--timeout", str(timeout)],
                        name=f"http-load-{fault}")
    try:
        load.wait_log("^http-load ready$", timeout=20)
        time.sleep(fault_after)
        injected = time.monotonic()
        inject(peer, fault)
        fault_at = FaultTime(injected, time.monotonic())  # in effect from here on (a kill reaped, the rules loaded)
        try:
            load.wait(load_s + timeout + 10)
        finally:
            undo(peer, fault)
    finally:
        load.stop()
    return parse_load(load.log_text()), fault_at
