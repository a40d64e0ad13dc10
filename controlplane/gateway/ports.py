"""How fast this gateway may open connections to one service before connect() slows down.

The exporting gateway opens a new connection to the exported service for every connection that
arrives, and closes it when the stream ends; each closed connection keeps its local port in
TIME_WAIT for 60 s (fixed in Linux). connect() tries one half of `net.ipv4.ip_local_port_range`
first, so once the TIME_WAIT ports towards one address and port fill about that half, every
connect() scans thousands of ports: on this project's benchmark the no-agent path fell from 1,129
to 175 connections/s over 20,000 connections. `net.ipv4.tcp_tw_reuse=1` lets connect() reuse a
TIME_WAIT port (safe for outgoing connections, the kernel checks TCP timestamps); the kernel's
default, 2, does that only on loopback.

`connect_limits(root)` reads the two settings of this network namespace (tests point `root` at a
copy of /proc) and says what they mean, for one line in the gateway's start-up log. The chart sets
them with `gateway.sysctls`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

TIME_WAIT_SECONDS = 60  # TCP_TIMEWAIT_LEN, not tunable


@dataclass(frozen=True)
class ConnectLimits:
    low: int
    high: int
    tw_reuse: int | None  # None: unreadable

    @property
    def ports(self) -> int:
        return self.high - self.low + 1

    @property
    def rate(self) -> int:
        """New connections/s to one address and port that keep connect() on its first half of ports."""
        return self.ports // 2 // TIME_WAIT_SECONDS

    def describe(self) -> str:
        head = f"local ports {self.low}-{self.high}"
        if self.tw_reuse == 1:
            return f"{head}, net.ipv4.tcp_tw_reuse=1: connect() reuses TIME_WAIT ports"
        setting = " unreadable" if self.tw_reuse is None else f"={self.tw_reuse}"
        return (f"{head}, net.ipv4.tcp_tw_reuse{setting}: above about {self.rate} new connections/s to one "
                f"service for {TIME_WAIT_SECONDS} s, connect() slows down scanning TIME_WAIT ports "
                f"(net.ipv4.tcp_tw_reuse=1 avoids it; chart value gateway.sysctls)")


def _read_ints(path: Path) -> list[int] | None:
    try:
        return [int(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return None


def connect_limits(root: Path = Path("/")) -> ConnectLimits | None:
    """The port range and tcp_tw_reuse of this netns; None when the port range is unreadable."""
    sysctl = root / "proc/sys/net/ipv4"
    ports = _read_ints(sysctl / "ip_local_port_range")
    if not ports or len(ports) != 2 or not 0 < ports[0] <= ports[1] <= 65535:
        return None
    reuse = _read_ints(sysctl / "tcp_tw_reuse")
    return ConnectLimits(ports[0], ports[1], reuse[0] if reuse and len(reuse) == 1 else None)


def log_connect_limits(log: logging.Logger, root: Path = Path("/")) -> None:
    limits = connect_limits(root)
    if limits is None:
        log.info("Outgoing connections: cannot read net.ipv4.ip_local_port_range")
    else:
        log.info("Outgoing connections: %s", limits.describe())
