"""Policy denials, aggregated for the control plane (which tells users with Kubernetes Events).

Each denial is counted under (direction, Import or Export, peer, policy); every
--denial-report-interval (10 s) the worker sends what accumulated (`ControlPlane.Report`) and starts over. At
most `max_entries` distinct keys wait (more are counted in `dropped`): a flood of denials costs a
dict increment each, and the report stays small. Only configured objects and peers are keys.
"""

from __future__ import annotations

from controlplane.api import clusterlink_pb2 as pb


class DenialReports:
    def __init__(self, max_entries: int = 256) -> None:
        self._counts: dict[tuple[str, str, str, str, str], int] = {}
        self._max = max_entries
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, direction: str, namespace: str, name: str, peer: str, policy: str) -> None:
        key = (direction, namespace, name, peer, policy)
        count = self._counts.get(key)
        if count is None and len(self._counts) >= self._max:
            self.dropped += 1
            return
        self._counts[key] = (count or 0) + 1

    def take(self) -> list[pb.Denial]:
        """What accumulated since the previous call (and forget it)."""
        out = [pb.Denial(direction=d, namespace=ns, name=n, peer=p, policy=pol, count=c)
               for (d, ns, n, p, pol), c in self._counts.items()]
        self._counts.clear()
        return out
