"""The transport protocols an Export or Import carries (`spec.protocol`), shared by the model, the
gateways and the agents (which read them from snapshots, as strings).

Absent means TCP, as in the original ClusterLink, which carries TCP only; TCPAndUDP carries both on
the same port number (DNS, iperf3 -u).
"""

from __future__ import annotations

PROTOCOL_TCP = "TCP"
PROTOCOL_UDP = "UDP"
PROTOCOL_BOTH = "TCPAndUDP"
PROTOCOLS = (PROTOCOL_TCP, PROTOCOL_UDP, PROTOCOL_BOTH)
DEFAULT_PROTOCOL = PROTOCOL_TCP

_CARRIED: dict[str, frozenset[str]] = {
    PROTOCOL_TCP: frozenset({PROTOCOL_TCP}),
    PROTOCOL_UDP: frozenset({PROTOCOL_UDP}),
    PROTOCOL_BOTH: frozenset({PROTOCOL_TCP, PROTOCOL_UDP}),
}


def carried(protocol: str | None) -> frozenset[str]:
    """The transport protocols (`"TCP"`, `"UDP"`) a `spec.protocol` value carries; None or "" is TCP."""
    if not protocol:
        return _CARRIED[PROTOCOL_TCP]
    try:
        return _CARRIED[protocol]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported protocol {protocol!r} (supported: {', '.join(PROTOCOLS)})") from None
