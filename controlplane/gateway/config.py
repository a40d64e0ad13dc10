"""The gateway's configuration: flags (each also read from `CLUSTERLINK_<FLAG>`), parsed once into
a frozen `GatewayConfig` that is passed explicitly to whatever needs it.

The supervisor and its workers parse the same command line; workers get two more, internal flags
(`--worker-index`, `--runtime-dir`) that --help does not show.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from controlplane.api import eventloop, flags
from controlplane.peerwire import framing

from .cpus import available_cpus

# Only the peer port faces other peers (the WAN); every other listener serves local clients
# (agents, the Imports' clients, a Prometheus), so by default it is bound to loopback, where a
# standalone peer's clients are: a node or cluster network must be named to be served (the chart
# and the fabric name theirs). Nothing but the peer port is then reachable from the WAN side.
DEFAULT_PEER_LISTEN = "0.0.0.0:443"
DEFAULT_LOCAL_HOST = "127.0.0.1"
DEFAULT_AGENT_LISTEN = f"{DEFAULT_LOCAL_HOST}:4443"
DEFAULT_METRICS_LISTEN = f"{DEFAULT_LOCAL_HOST}:9090"

MIN_LIVENESS_TIMEOUT = 2.5 * framing.HEARTBEAT_INTERVAL  # a heartbeat may be late by one check

EXIT_CONFIG = 78  # EX_CONFIG: a worker cannot start with this configuration; restarting won't help


class ConfigError(ValueError):
    """The configuration cannot work; the message says which setting and why."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what a client may cost us (seconds and bytes)."""

    handshake_timeout: float = 5.0      # TLS handshake on the peer port
    request_timeout: float = 10.0       # from the first byte of a request (or the preamble) to its end
    idle_timeout: float = 120.0         # keep-alive: between requests on the peer port
    connect_timeout: float = 3.0        # TCP+TLS to a remote gateway; TCP to an exported service
    response_timeout: float = 5.0       # a remote gateway's answer to /authz or CONNECT
    drain_timeout: float = 10.0         # on SIGTERM: how long connections may take to finish
    max_connections: int = 8192         # per gateway (split evenly between workers)
    max_pending_handshakes: int = 512   # per worker
    max_header_bytes: int = 16 * 1024   # HTTP header block (431 beyond)
    max_body_bytes: int = 64 * 1024     # HTTP body (413 beyond)
    replay_bytes: int = 64 * 1024       # client bytes kept until the remote accepts the CONNECT
    max_requests: int = 1000            # requests (healthz, authz, framed CONNECTs) per peer-port connection
    liveness_timeout: float = 6.0       # silence of another gateway on a tunnel before its connections reset
    probe_interval: float = 0.25        # between probes (GET /healthz) of each remote peer on an idle tunnel; 0: off
    probe_timeout: float = 0.5          # a probe unanswered this long marks the peer down (failover)
    udp_idle_timeout: float = 60.0      # a UDP flow to an exported service with no datagram either way ends


@dataclass(frozen=True)
class GatewayConfig:
    certs: Path
    controlplane: str
    join_token_file: Path
    controlplane_ca: Path | None
    peer_listen: tuple[str, int]
    agent_listen: tuple[str, int]
    import_host: str
    workers: int
    metrics_listen: tuple[str, int] | None
    token_lifetime: float
    pool_size: int
    pool_keepalive: float
    pool_max_size: int
    pool_demand_window: float
    framed_tunnels: bool
    limits: Limits
    log_level: str
    log_format: str
    event_loop: str = "auto"
    serve_unconfigured_peers: bool = False  # --unconfigured-peers serve
    access_log: bool = False  # --access-log on
    denial_report_interval: float = 10.0
    worker_index: int | None = None
    runtime_dir: Path | None = None
    supervisor_pid: int | None = None

    @property
    def is_worker(self) -> bool:
        return self.worker_index is not None

    @property
    def connections_per_worker(self) -> int:
        return max(1, -(-self.limits.max_connections // max(1, self.workers)))


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not zero or a positive number")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is negative")
    return number


def _optional_host_port(value: str) -> tuple[str, int] | None:
    if value.strip().lower() in ("", "off", "none"):
        return None
    return flags.host_port(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clusterlink-gateway",
        description="The ClusterLink gateway of one peer: the mTLS peer port (healthz, authz, CONNECT to exported "
                    "services), the agent port and the Imports' target ports (egress through pooled mTLS tunnels). "
                    "A supervisor runs --workers processes that share every port.")
    d = Limits()
    flags.add(p, "--certs", type=Path, help="Directory with this peer's cert.pem, key.pem and the fabric's ca.pem; "
                                           "our peer name is the certificate's DNS SAN")
    flags.add(p, "--controlplane", help="Address of the control plane's API: unix:/<path> or host:port (TLS)")
    flags.add(p, "--join-token-file", type=Path, help="File holding the join token presented to the control plane")
    flags.add(p, "--controlplane-ca", type=Path,
              help="CA certificate that signed the control plane's API certificate (host:port only; "
                   "default: the fabric CA in --certs)")
    flags.add(p, "--peer-listen", default=DEFAULT_PEER_LISTEN, type=flags.host_port,
              help="Address of the mTLS peer port (remote gateways and heartbeats connect here); IPv6 as "
                   "[addr]:port; [::]:port listens on every IPv4 and every IPv6 address (dual stack)")
    flags.add(p, "--agent-listen", default=DEFAULT_AGENT_LISTEN, type=flags.host_port,
              help="Address of the agent port (plain TCP, node agents' redirected connections with a preamble); "
                   "bind it to the node-facing (LAN) address, never where other peers reach it")
    flags.add(p, "--import-host", default=DEFAULT_LOCAL_HOST,
              help="Bind address of the Imports' target ports (one listener per Import; they take no credential): "
                   "the local network's address, never the WAN side")
    flags.add(p, "--workers", default=available_cpus(), type=_positive_int,
              help="Worker processes; each serves every port (SO_REUSEPORT) on its own core (default: the CPUs "
                   "this process may use: its affinity and its cgroup's CPU quota, rounded up). With 1 there is no "
                   "supervisor: the gateway process is the worker and the orchestrator restarts it if it dies")
    flags.add(p, "--metrics-listen", default=DEFAULT_METRICS_LISTEN, type=_optional_host_port,
              help="Address of the Prometheus /metrics endpoint (all workers aggregated); 'off' disables it")
    flags.add(p, "--token-lifetime", default=30.0, type=_positive_float,
              help="Lifetime in seconds of the access tokens this gateway issues to remote peers")
    flags.add(p, "--pool-size", default=4, type=_non_negative_int,
              help="Established mTLS tunnels kept ready per remote peer and worker (0: connect on demand)")
    flags.add(p, "--pool-max-size", default=64, type=_positive_int,
              help="Most idle tunnels kept per remote peer and worker: after a burst of N concurrent connections "
                   "the pool keeps up to N (at least --pool-size) for one to two --pool-demand-window, so the "
                   "next burst pays no handshakes")
    flags.add(p, "--pool-demand-window", default=30.0, type=_positive_float,
              help="Seconds a peak of concurrent tunnels keeps the pool that large; idle tunnels above the "
                   "recent peak are closed after it")
    flags.add(p, "--pool-keepalive", default=10.0, type=_positive_float,
              help="Seconds between health checks (GET /healthz) on each idle pooled tunnel")
    flags.add(p, "--peer-probe-interval", default=d.probe_interval, type=_non_negative_float,
              help="Seconds between probes (GET /healthz on an idle pooled tunnel) of each remote peer, per "
                   "worker: the sub-second failover for a peer that is frozen or cut off (a refused or reset one "
                   "is noticed at once without them); 0 turns probing off (then such a peer is noticed by "
                   "--connect-timeout, --response-timeout and the control plane's heartbeats)")
    flags.add(p, "--peer-probe-timeout", default=d.probe_timeout, type=_positive_float,
              help="Seconds a probe may go unanswered before the peer is marked down for new connections: "
                   "they go to the Import's other sources first, and connections waiting for that peer's "
                   "answer move to the next source if there is one; a successful probe or connect marks it "
                   "up again. Keep it well above the peers' round-trip time")
    flags.add(p, "--framed-tunnels", default="on", choices=["on", "off"],
              help="Offer and use framed tunnels with peers that support them: a tunnel goes back to the pool "
                   "after its connection instead of closing (off: plain CONNECT tunnels only, as the original)")
    flags.add(p, "--unconfigured-peers", default="refuse", choices=["refuse", "serve"],
              help="A remote gateway whose fabric certificate names no configured Peer object: refuse "
                   "(default; 403 to every request on the peer port) or serve it (policies still decide; "
                   "its metrics are labelled peer=\"unconfigured\")")
    flags.add(p, "--access-log", default="off", choices=["off", "on"],
              help="on: one line per connection when it ends (logger clusterlink.access, info level whatever "
                   "--log-level says, in --log-format): connection id, direction, Import or Export, peer, "
                   "client attributes, bytes each way, duration, setup time and result")
    flags.add(p, "--denial-report-interval", default=10.0, type=_positive_float,
              help="Seconds between reports of policy denials to the control plane (counts per Import or "
                   "Export, peer and policy; in Kubernetes it records them as Events on the Import or Export)")
    flags.add(p, "--max-connections", default=d.max_connections, type=_positive_int,
              help="Concurrent client connections (peer, agent and import ports together), split between workers")
    flags.add(p, "--max-requests-per-connection", default=d.max_requests, type=_positive_int,
              help="Requests one peer-port connection may make (keepalives, /authz, framed tunnels); the last "
                   "is answered with 'Connection: close' and the remote pool opens a new tunnel")
    flags.add(p, "--handshake-timeout", default=d.handshake_timeout, type=_positive_float,
              help="Seconds a client gets to complete its TLS handshake on the peer port")
    flags.add(p, "--request-timeout", default=d.request_timeout, type=_positive_float,
              help="Seconds a client gets to send a whole request (peer port) or preamble (agent port); "
                   "also bounds the wait for a first request")
    flags.add(p, "--idle-timeout", default=d.idle_timeout, type=_positive_float,
              help="Seconds an idle keep-alive connection on the peer port is kept (longer than the remote "
                   "pools' --pool-keepalive)")
    flags.add(p, "--connect-timeout", default=d.connect_timeout, type=_positive_float,
              help="Seconds to connect to a remote gateway (TCP+TLS) or to an exported service (TCP)")
    flags.add(p, "--udp-idle-timeout", default=d.udp_idle_timeout, type=_positive_float,
              help="Seconds without a datagram either way after which a UDP flow to an exported service ends "
                   "(its tunnel closes, its socket to the service too); the agents end their flows earlier "
                   "(agent --udp-idle-timeout, 30 s by default), this is the backstop")
    flags.add(p, "--response-timeout", default=d.response_timeout, type=_positive_float,
              help="Seconds to wait for a remote gateway's answer to /authz or CONNECT")
    flags.add(p, "--tunnel-liveness-timeout", default=d.liveness_timeout, type=_positive_float,
              help="Seconds of silence from another gateway on a busy tunnel before its connections are reset "
                   f"(framed tunnels carry a heartbeat every {framing.HEARTBEAT_INTERVAL:g} s; an idle tunnel, "
                   "plain ones included, gets TCP keepalive probes after it); at least "
                   f"{MIN_LIVENESS_TIMEOUT:g}")
    flags.add(p, "--drain-timeout", default=d.drain_timeout, type=_positive_float,
              help="On SIGTERM/SIGINT: seconds open connections get to finish before they are reset")
    eventloop.add_flag(p)
    flags.add(p, "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="Log level")
    flags.add(p, "--log-format", default="auto", choices=["auto", "text", "json"],
              help="Log format: text, json, or auto (text on a terminal, JSON otherwise)")
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--runtime-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--supervisor-pid", type=int, default=None, help=argparse.SUPPRESS)
    return p


def load_config(argv: Sequence[str] | None = None) -> GatewayConfig:
    """Parse flags (and environment) into a GatewayConfig; exits with a usage message on errors."""
    parser = build_parser()
    a = parser.parse_args(argv)
    missing = [name for name in ("certs", "controlplane", "join_token_file") if getattr(a, name) in (None, "")]
    if missing:
        parser.error("missing required setting(s): " + ", ".join(
            f"--{m.replace('_', '-')} (or ${flags.env_name(m.replace('_', '-'))})" for m in missing))
    if a.controlplane.startswith("unix:") and a.controlplane_ca is not None:
        parser.error("--controlplane-ca is for a host:port control plane, not unix:")
    if a.pool_max_size < a.pool_size:
        parser.error(f"--pool-max-size ({a.pool_max_size}) must be at least --pool-size ({a.pool_size})")
    if a.idle_timeout <= a.pool_keepalive:
        parser.error(f"--idle-timeout ({a.idle_timeout:g} s) must be longer than --pool-keepalive "
                     f"({a.pool_keepalive:g} s), or pooled tunnels are cut while idle")
    try:
        eventloop.resolve(a.event_loop)
    except ValueError as exc:
        parser.error(str(exc))
    if a.tunnel_liveness_timeout < MIN_LIVENESS_TIMEOUT:
        parser.error(f"--tunnel-liveness-timeout ({a.tunnel_liveness_timeout:g} s) must be at least "
                     f"{MIN_LIVENESS_TIMEOUT:g} s (heartbeats come every {framing.HEARTBEAT_INTERVAL:g} s)")
    if a.peer_probe_timeout > a.response_timeout:
        parser.error(f"--peer-probe-timeout ({a.peer_probe_timeout:g} s) must not be longer than "
                     f"--response-timeout ({a.response_timeout:g} s)")
    limits = Limits(handshake_timeout=a.handshake_timeout, request_timeout=a.request_timeout,
                    idle_timeout=a.idle_timeout, connect_timeout=a.connect_timeout,
                    response_timeout=a.response_timeout, drain_timeout=a.drain_timeout,
                    max_requests=a.max_requests_per_connection,
                    max_connections=a.max_connections, liveness_timeout=a.tunnel_liveness_timeout,
                    probe_interval=a.peer_probe_interval, probe_timeout=a.peer_probe_timeout,
                    udp_idle_timeout=a.udp_idle_timeout)
    return GatewayConfig(
        certs=a.certs, controlplane=a.controlplane, join_token_file=a.join_token_file,
        controlplane_ca=a.controlplane_ca, peer_listen=a.peer_listen, agent_listen=a.agent_listen,
        import_host=a.import_host, workers=a.workers, metrics_listen=a.metrics_listen,
        token_lifetime=a.token_lifetime, pool_size=a.pool_size, pool_keepalive=a.pool_keepalive,
        pool_max_size=a.pool_max_size, pool_demand_window=a.pool_demand_window,
        framed_tunnels=a.framed_tunnels == "on", serve_unconfigured_peers=a.unconfigured_peers == "serve",
        access_log=a.access_log == "on", denial_report_interval=a.denial_report_interval,
        limits=limits, log_level=a.log_level, log_format=a.log_format, event_loop=a.event_loop,
        worker_index=a.worker_index, runtime_dir=a.runtime_dir, supervisor_pid=a.supervisor_pid)
