"""What this worker has seen of each remote peer's reachability (pure: no I/O, no clock).

The control plane's heartbeats (`PeerInfo.reachable` in the snapshot) are slow by design (5
failures at 1 s intervals, up to 20 s when packets are dropped). The tunnel pool knows sooner: a
connection attempt that failed on every gateway of a peer (refused, reset, timed out), or a probe
(`--peer-probe-interval`) that went unanswered for `--peer-probe-timeout`, marks the peer down at
once; the next successful connection or probe marks it up again. For load balancing, this local
evidence wins; a peer this worker has not tried yet is judged by the heartbeats. Each change is
reported with its reason (`connect`, `probe`) to `on_change`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .state import PeerView

Gateway = tuple[str, int]


class PeerHealth:
    def __init__(self, on_change: Callable[[str, bool, str], None] | None = None) -> None:
        self._seen: dict[str, bool] = {}
        self._on_change = on_change

    def mark(self, peer: str, reachable: bool, reason: str = "connect") -> bool:
        """Record an outcome (`reason`: what showed it); True when it changed what we believed."""
        changed = self._seen.get(peer) != reachable
        self._seen[peer] = reachable
        if changed and self._on_change is not None:
            self._on_change(peer, reachable, reason)
        return changed

    def seen(self, peer: str) -> bool | None:
        """What the last attempt said (None: no attempt yet)."""
        return self._seen.get(peer)

    def unreachable(self, peer: PeerView) -> bool:
        seen = self._seen.get(peer.name)
        return (not seen) if seen is not None else not peer.reachable

    def forget(self, peer: str) -> None:
        self._seen.pop(peer, None)


@dataclass(frozen=True)
class ProbeVerdict:
    """What one round of probes of a peer's gateways says (`judge_probes`)."""

    peer_up: bool  # some gateway answered: the peer is up (False: mark it down)
    gateways_down: tuple[Gateway, ...]  # to mark down by themselves (the peer has others that answer)
    gateways_up: tuple[Gateway, ...]  # answered


def judge_probes(results: Mapping[Gateway, str | None]) -> ProbeVerdict:
    """`results`: each gateway of the peer probed, None when it answered, else why not. A peer is
    down only when none answered; a gateway is marked down by itself only when another answered
    (a peer with one gateway is simply up or down)."""
    up = tuple(g for g, why in results.items() if why is None)
    if not up:
        return ProbeVerdict(False, (), ())
    return ProbeVerdict(True, tuple(g for g, why in results.items() if why is not None), up)
