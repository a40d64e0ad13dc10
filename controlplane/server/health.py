"""Peer health state machine (ClusterLink's heartbeat semantics), pure.

Probe every 1 s while reachable, 10 s while not (back to 1 s after the first success); 3
consecutive successes to become reachable, 5 consecutive failures to become unreachable; at start
a single result decides.
"""

from __future__ import annotations

from dataclasses import dataclass

HEALTHY_INTERVAL = 1.0
UNHEALTHY_INTERVAL = 10.0
PROBE_TIMEOUT = 3.0
SUCCESSES_TO_REACHABLE = 3
FAILURES_TO_UNREACHABLE = 5


@dataclass
class PeerHealth:
    reachable: bool | None = None  # None: not probed yet
    successes: int = 0
    failures: int = 0
    last_ok: bool = False

    def record(self, ok: bool) -> bool:
        """Account one probe result; True when `reachable` changed."""
        self.last_ok = ok
        if ok:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0
        before = self.reachable
        if before is None:
            self.reachable = ok
        elif not before and self.successes >= SUCCESSES_TO_REACHABLE:
            self.reachable = True
        elif before and self.failures >= FAILURES_TO_UNREACHABLE:
            self.reachable = False
        return self.reachable != before

    def interval(self) -> float:
        if self.reachable or self.last_ok:
            return HEALTHY_INTERVAL
        return UNHEALTHY_INTERVAL
