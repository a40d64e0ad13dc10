"""`clusterlink-agent`: the node agent.

Loads the BPF redirect on the pods' cgroup, runs the splice proxy on an address the pods reach,
registers with the control plane for a credential, and follows the agent snapshot: every imported
VIP:port is redirected into the proxy, which tells the gateway which import the client asked for and
who the client is (its workload, found from the cgroup the kernel recorded at connect()).

The data path keeps working with the last snapshot while the control plane is away.

Memory: the BPF programs are compiled by a short-lived child (agent.datapath's compiler process),
so BCC, libbcc and LLVM never enter this process. What remains at idle is mostly the code of
grpcio, asyncio/OpenSSL, protobuf and prometheus_client. glibc's malloc is left at its defaults:
MALLOC_ARENA_MAX=1 or 2 and malloc_trim() were measured on a running agent and changed its RSS by
0.2 MB or less.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.api.client import APIError, ControlPlaneClient, Endpoint, SnapshotFeed, read_token
from controlplane.api.preamble import Preamble, encode_preamble
from controlplane.api import eventloop
from controlplane.api.flags import add as add_flag
from controlplane.api.flags import host_port
from controlplane.api.logsetup import setup_logging

from agent.datapath.datapath import Redirect
from agent.proxy.server import Upstream
from agent.proxy.upstreams import DEFAULT_MAX_AGE as DEFAULT_POOL_MAX_AGE
from agent.proxy.upstreams import DEFAULT_SIZE as DEFAULT_POOL_SIZE
from agent.proxy.datagrams import DEFAULT_IDLE_TIMEOUT as DEFAULT_UDP_IDLE_TIMEOUT
from agent.routes import RouteCache
from agent.sync.table import NodeTable

log = logging.getLogger(__name__)

DATAPATH_RETRY = 30.0  # seconds between starts of a datapath that failed (--on-datapath-failure retry)


@dataclass(frozen=True)
class Config:
    node: str
    cgroup: str
    controlplane: str
    join_token_file: Path
    controlplane_ca: Path | None
    server_name: str
    proxy_address: str
    proxy_port: int
    proxy_interface: str
    metrics_listen: tuple[str, int] | None
    workloads: str
    log_level: str
    log_format: str
    upstream_pool_size: int = DEFAULT_POOL_SIZE
    upstream_pool_max_age: float = DEFAULT_POOL_MAX_AGE
    event_loop: str = "auto"
    on_datapath_failure: str = "exit"
    udp: bool = True
    udp_idle_timeout: float = DEFAULT_UDP_IDLE_TIMEOUT
    proxy_address6: str = ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="clusterlink-agent",
        description="ClusterLink node agent: eBPF redirect of imported-service VIPs into a local splice proxy, "
                    "with the client's identity taken from its cgroup.")
    add_flag(p, "--node", default=os.uname().nodename, help="This node's name (Kubernetes: spec.nodeName)")
    add_flag(p, "--cgroup", help="cgroup v2 directory whose processes (the pods) are redirected; programs apply to "
                                 "it and every cgroup below it; `auto`: the kubelet's pods cgroup under the cgroup "
                                 "v2 mount (kubepods.slice with the systemd cgroup driver, kubepods with cgroupfs)")
    add_flag(p, "--on-datapath-failure", choices=("exit", "retry"), default="exit",
             help="When the BPF datapath cannot start (no kernel headers on the node, no BCC, no cgroup v2): exit "
                  "with the reason, or retry: keep running, report it (clusterlink_agent_datapath_ready 0, "
                  f"clusterlink_agent_datapath_start_failures_total) and try again every {DATAPATH_RETRY:g} s; "
                  "meanwhile Imports work through the gateway's Import Services, without the agent's shortcut "
                  "(the chart uses retry)")
    add_flag(p, "--controlplane", default="unix:/run/clusterlink/controlplane.sock",
             help="Control-plane API address: unix:/<path> or host:port (TLS)")
    add_flag(p, "--join-token-file", type=Path, default=Path("/var/lib/clusterlink/join.token"),
             help="File with the join token the control plane expects from agents")
    add_flag(p, "--controlplane-ca", type=Path, help="CA certificate to verify a TCP control-plane address")
    add_flag(p, "--server-name", default="", help="Name in the control plane's certificate (TCP only; the peer name)")
    add_flag(p, "--proxy-address", help="Address of the node proxy, reachable from the pods (never 127.0.0.1 "
                                        "for pods in their own network namespace)")
    add_flag(p, "--proxy-address6", default="",
             help="An IPv6 address of the node proxy, reachable from the pods (it listens there too, on --proxy-port, "
                  "and the relays of UDP IPv6 VIPs are bound there): where connections to IPv6 VIPs go; `auto`: the "
                  "first global IPv6 address of the interface holding --proxy-address (none: as empty, logged); "
                  "empty: they go to --proxy-address v4-mapped (::ffff:<address>), which needs pods with IPv4 "
                  "(dual stack) and, for UDP, connected sockets")
    add_flag(p, "--proxy-port", type=int, default=15001, help="Port of the node proxy")
    add_flag(p, "--proxy-interface", default="",
             help="Interface to put --proxy-address on if it is missing (removed again on stop); empty: the address "
                  "must already exist")
    add_flag(p, "--metrics-listen", default="127.0.0.1:9092",
             help="host:port for /metrics (loopback by default: name the node's address to be scraped "
                  "from the network); 'none' disables it")
    add_flag(p, "--upstream-pool-size", type=int, default=DEFAULT_POOL_SIZE,
             help="Connections to the gateway's agent port opened ahead of need while clients keep connecting "
                  "(each used once); 0 disables")
    add_flag(p, "--upstream-pool-max-age", type=float, default=DEFAULT_POOL_MAX_AGE,
             help="Seconds a pre-opened gateway connection may wait unused before it is closed; keep it below the "
                  "gateway's --request-timeout (10 s by default)")
    add_flag(p, "--udp", choices=("on", "off"), default="on",
             help="Redirect UDP to Imports that carry it (protocol UDP or TCPAndUDP): one relay socket per such "
                  "VIP:port on --proxy-address, one tunnel per client flow; off: only TCP is redirected")
    add_flag(p, "--udp-idle-timeout", type=float, default=DEFAULT_UDP_IDLE_TIMEOUT,
             help="Seconds without a datagram either way after which a UDP flow ends (its tunnel closes; the "
                  "client's next datagram starts a new one, policy checked again); keep it below the gateways' "
                  "--udp-idle-timeout (60 s by default)")
    eventloop.add_flag(p)
    add_flag(p, "--workloads", default="standalone",
             help="Where client identities come from: standalone (Workload objects from the control plane) or "
                  "kubernetes (the pods of this node)")
    add_flag(p, "--log-level", default="info", help="debug, info, warning or error")
    add_flag(p, "--log-format", default="auto", help="text, json, or auto (text on a terminal)")
    return p


def _is_ipv6(text: str) -> bool:
    import socket

    try:
        socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return False
    return True


def load_config(argv: Sequence[str] | None = None) -> Config:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not a.cgroup:
        parser.error("--cgroup is required (the cgroup v2 directory of the pods)")
    if not a.proxy_address:
        parser.error("--proxy-address is required (an address of this node that the pods can reach)")
    if a.proxy_address6 and a.proxy_address6 != "auto" and not _is_ipv6(a.proxy_address6):
        parser.error(f"--proxy-address6 must be an IPv6 address or auto, not {a.proxy_address6!r}")
    if a.workloads not in ("standalone", "kubernetes"):
        parser.error(f"--workloads must be standalone or kubernetes, not {a.workloads!r}")
    if a.upstream_pool_size < 0:
        parser.error(f"--upstream-pool-size must be 0 (off) or more, not {a.upstream_pool_size}")
    if not a.udp_idle_timeout > 0:
        parser.error(f"--udp-idle-timeout must be a positive number of seconds, not {a.udp_idle_timeout}")
    if not a.upstream_pool_max_age > 0:
        parser.error(f"--upstream-pool-max-age must be a positive number of seconds, not {a.upstream_pool_max_age}")
    try:
        eventloop.resolve(a.event_loop)
    except ValueError as exc:
        parser.error(str(exc))
    metrics = None if a.metrics_listen in ("", "none") else host_port(a.metrics_listen)
    return Config(node=a.node, cgroup=a.cgroup, controlplane=a.controlplane, join_token_file=a.join_token_file,
                  controlplane_ca=a.controlplane_ca, server_name=a.server_name, proxy_address=a.proxy_address,
                  proxy_port=a.proxy_port, proxy_interface=a.proxy_interface, metrics_listen=metrics,
                  workloads=a.workloads, log_level=a.log_level, log_format=a.log_format,
                  upstream_pool_size=a.upstream_pool_size, upstream_pool_max_age=a.upstream_pool_max_age,
                  event_loop=a.event_loop, on_datapath_failure=a.on_datapath_failure, udp=a.udp == "on",
                  udp_idle_timeout=a.udp_idle_timeout, proxy_address6=a.proxy_address6)


@dataclass(frozen=True)
class Route:
    """What connections from one cgroup to one VIP:port resolve to (see agent/routes.py), with the
    metric children they count in."""

    upstream: Upstream
    redirected: Any                # the clusterlink_agent_redirected_connections_total child
    identity_failure: Any = None   # the identity_lookup_failures child, when the client is unknown


class Agent:
    """The agent's state: the current table, the credential, and the datapath/proxy it drives."""

    def __init__(self, config: Config, datapath, metrics) -> None:  # type: ignore[no-untyped-def]
        self.config = config
        self.datapath = datapath
        self.metrics = metrics
        self.table = NodeTable()
        self.table_received_at = 0.0
        self._credential = ""
        self.workload_resolver = None  # Kubernetes mode: agent.kube resolver
        self.routes: RouteCache[Route] = RouteCache()
        self.udp_routes: RouteCache[Route] = RouteCache()  # the same VIP:port may carry TCP and UDP
        self.udp_relays = None  # agent.proxy.datagrams.UdpRelays once the datapath runs (--udp on)
        self._generation = 0  # changes with the table and the credential: cached routes depend on both

    @property
    def credential(self) -> str:
        return self._credential

    @credential.setter
    def credential(self, value: str) -> None:
        if value != self._credential:
            self._credential = value
            self._generation += 1

    # -- snapshots ---------------------------------------------------------------------------------
    def apply_snapshot(self, snap) -> None:  # type: ignore[no-untyped-def]
        table = NodeTable.from_snapshot(snap)
        udp: dict[tuple[str, int], tuple[str, int]] = {}
        if self.udp_relays is not None:
            try:
                udp = self.udp_relays.sync(table.udp_services())
            except OSError as exc:
                log.error("snapshot %d: cannot open the UDP relays (%s); UDP imports are not redirected",
                          table.version, exc)
                udp = self.udp_relays.addresses()
        proxy = (self.config.proxy_address, self.config.proxy_port)
        proxy6 = (self.config.proxy_address6, self.config.proxy_port) if self.config.proxy_address6 else proxy
        result = self.datapath.reconcile({**table.services(proxy), **table.services6(proxy6)}, udp=udp)
        self.table = table
        self._generation += 1
        self.table_received_at = time.time()
        self.metrics.snapshot_version.set(table.version)
        self.metrics.imports.set(len(table.imports))
        if result.added or result.updated or result.removed:
            log.info("snapshot %d: %d imports redirected (+%d ~%d -%d)", table.version, len(table.imports),
                     result.added, result.updated, result.removed)

    # -- the proxy's question ----------------------------------------------------------------------
    def resolve(self, client: tuple[str, int]) -> Upstream | None:
        """Where the redirected connection from `client` goes, with its preamble; None to reset it.
        Synchronous (a few bpf(2) syscalls and dictionary lookups), so the proxy needs no task."""
        redirect = self.datapath.lookup(client[0], client[1])
        if redirect is None:
            self.metrics.lookup_failures.labels(reason="no-redirect-record").inc()
            return None
        return self._upstream(self.routes, redirect, udp=False)

    def resolve_udp(self, service: tuple[str, int], client: tuple[str, int]) -> Upstream | None:
        """Where a new UDP flow from `client` to the relay of `service` (VIP, port) goes; None to
        drop it. The client's cgroup is the egress program's record for its address."""
        sender = self.datapath.udp_sender(client[0], client[1])
        if sender is None:
            self.metrics.lookup_failures.labels(reason="no-udp-sender-record").inc()
            return None
        # The record names the last VIP this socket sent to; the relay says which one this flow is for.
        redirect = Redirect(orig_ip=service[0], orig_port=service[1], cgroup_id=sender.cgroup_id)
        return self._upstream(self.udp_routes, redirect, udp=True)

    def _upstream(self, cache: RouteCache[Route], redirect, *, udp: bool) -> Upstream | None:  # type: ignore[no-untyped-def]
        """The route of a redirect, from `cache` when it is current, and counted."""
        key = (redirect.orig_ip, redirect.orig_port, redirect.cgroup_id)
        resolver = self.workload_resolver
        generation = (self._generation, resolver.generation if resolver is not None else 0)
        route = cache.get(key, generation)
        if route is None:
            route, cacheable = self._route(redirect, udp=udp)
            if route is None:
                return None
            if cacheable:
                cache.put(key, generation, route)
        route.redirected.inc()
        if route.identity_failure is not None:
            route.identity_failure.inc()
        return route.upstream

    def udp_flow_ended(self, client: tuple[str, int]) -> None:
        self.datapath.forget_udp_sender(client[0], client[1])

    def _route(self, redirect, *, udp: bool = False) -> tuple[Route | None, bool]:  # type: ignore[no-untyped-def]
        """Resolve a redirect record from scratch: (route or None, whether it may be cached)."""
        table = self.table
        ref = table.imports.get((redirect.orig_ip, redirect.orig_port))
        if ref is None:
            self.metrics.lookup_failures.labels(reason="unknown-import").inc()
            return None, False
        if table.gateway is None:
            self.metrics.lookup_failures.labels(reason="no-gateway").inc()
            return None, False
        attrs: dict[str, str] = {}
        failure = None
        cacheable = True
        path = self.datapath.cgroup_path_for_id(redirect.cgroup_id)
        if path is None:
            failure = "unknown-cgroup"
            cacheable = False  # a cgroup that vanished (or a rescan that missed it): ask again next time
        elif self.workload_resolver is not None:
            workload = self.workload_resolver.resolve(path)
            if workload is None:
                failure = "no-pod"
            else:
                from controlplane.api.attributes import client_attributes

                attrs = client_attributes(workload.namespace, workload.service_account, workload.labels)
        else:
            workload = table.workload_for(path)
            if workload is None:
                failure = "no-workload"
            else:
                attrs = workload.attributes()
        host = f"[{redirect.orig_ip}]" if ":" in redirect.orig_ip else redirect.orig_ip
        preamble = encode_preamble(Preamble(import_namespace=ref.namespace, import_name=ref.name,
                                            destination=f"{host}:{redirect.orig_port}", client=attrs,
                                            credential=self.credential, node=self.config.node, udp=udp))
        route = Route(upstream=Upstream(address=table.gateway, preamble=preamble),
                      redirected=self.metrics.redirected.labels(f"{ref.namespace}/{ref.name}"),
                      identity_failure=None if failure is None else
                      self.metrics.identity_failures.labels(reason=failure))
        return route, cacheable

    # -- registration ------------------------------------------------------------------------------
    async def keep_registered(self, endpoint: Endpoint) -> None:
        """Register, then renew the credential at half-life; retry with backoff on failure."""
        backoff = 0.2
        while True:
            try:
                async with ControlPlaneClient(endpoint) as client:
                    resp = await client.register(self.config.node)
                self.credential = resp.credential
                self.metrics.registered.set(1)
                lifetime = max(resp.expires_unix - time.time(), 2.0)
                backoff = 0.2
                await asyncio.sleep(lifetime / 2)
            except APIError as exc:
                self.metrics.registered.set(1 if self.credential else 0)
                log.warning("registering node %s with the control plane failed: %s", self.config.node, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)


async def run(config: Config) -> None:
    from agent.datapath import Datapath
    from agent.metrics import AgentMetrics
    from agent.proxy.server import NodeProxy

    token = read_token(config.join_token_file)
    endpoint = Endpoint(address=config.controlplane, token=token, ca_file=config.controlplane_ca,
                        server_name=config.server_name)
    from agent.datapath.cgroups import resolve_cgroup

    cgroup = resolve_cgroup(config.cgroup)
    if cgroup != config.cgroup:
        log.info("--cgroup %s: using %s", config.cgroup, cgroup)
    if config.proxy_address6 == "auto":
        from agent.netlink import ipv6_beside

        # pyroute2's synchronous API runs a loop of its own: not inside the running one
        found = await asyncio.to_thread(ipv6_beside, config.proxy_address)
        log.info("--proxy-address6 auto: %s", f"using {found}" if found else
                 f"no global IPv6 address beside {config.proxy_address}; IPv6 VIPs go to it v4-mapped")
        config = dataclasses.replace(config, proxy_address6=found or "")
    datapath = Datapath(cgroup, owner=f"clusterlink-agent:{config.node}")
    metrics = AgentMetrics(event_loop=eventloop.running_loop_name())
    agent = Agent(config, datapath, metrics)
    addresses = None
    proxy = None
    proxy6 = None
    metrics_server = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # /readyz: not ready while starting; ready once serving, or once the datapath is known not to
    # start (--on-datapath-failure retry: a steady, reported state, in which Imports still work).
    starting: list[str] = ["starting: compiling and attaching the BPF programs"]
    if config.metrics_listen:  # first: a datapath that cannot start is reported there
        metrics_server = metrics.serve(config.metrics_listen, table_age=lambda: time.time() - agent.table_received_at
                                       if agent.table_received_at else float("nan"),
                                       ready=lambda: starting[0] if starting else None)
    try:
        if not await _start_datapath(datapath, config, metrics, stop, on_failure=starting.clear):
            return  # stopped while waiting for the datapath
        metrics.attached.set(len(datapath.attached()))
        if config.proxy_interface:
            from agent.netlink import AddressManager

            addresses = AddressManager()
            # pyroute2's synchronous API runs a loop of its own: not inside the running one
            await asyncio.to_thread(addresses.ensure, config.proxy_interface, config.proxy_address)
        if config.workloads == "kubernetes":
            from agent.kube import PodResolver  # type: ignore[attr-defined]

            agent.workload_resolver = PodResolver(node=config.node)
            await agent.workload_resolver.start()
        proxy = NodeProxy((config.proxy_address, config.proxy_port), resolve=agent.resolve,
                          metrics=metrics.proxy, upstream_pool_size=config.upstream_pool_size,
                          upstream_max_age=config.upstream_pool_max_age)
        await proxy.start()
        if config.proxy_address6:
            proxy6 = NodeProxy((config.proxy_address6, config.proxy_port), resolve=agent.resolve,
                               metrics=metrics.proxy, upstream_pool_size=config.upstream_pool_size,
                               upstream_max_age=config.upstream_pool_max_age)
            await proxy6.start()
        if config.udp:
            from agent.proxy.datagrams import UdpRelays

            agent.udp_relays = UdpRelays(config.proxy_address, agent.resolve_udp, idle_timeout=config.udp_idle_timeout,
                                         metrics=metrics.udp, on_flow_end=agent.udp_flow_ended,
                                         host6=config.proxy_address6)
        starting.clear()
        feed = SnapshotFeed(endpoint, role="agent", node=config.node, on_snapshot=agent.apply_snapshot,
                            on_connected=lambda up: metrics.controlplane_connected.set(1 if up else 0),
                            name=f"agent {config.node} pid {os.getpid()}")
        # Everything made so far (modules, grpc, the datapath, the proxy) lives as long as the
        # process: out of the collector's sight, a full collection no longer stalls the proxy's
        # connections for ~3 ms (about 30,000 objects), it walks only what came later.
        gc.freeze()
        log.info("agent of node %s started: redirecting cgroup %s to %s:%d (event loop: %s)", config.node,
                 cgroup, config.proxy_address, config.proxy_port, eventloop.running_loop_name())
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(feed.run(), name="snapshot-feed"),
                     tg.create_task(agent.keep_registered(endpoint), name="registration")]
            await stop.wait()
            for task in tasks:
                task.cancel()
    finally:
        if agent.udp_relays is not None:
            await agent.udp_relays.close()
        if proxy6 is not None:
            await proxy6.stop()
        if proxy is not None:
            await proxy.stop()
        if agent.workload_resolver is not None:
            await agent.workload_resolver.stop()
        datapath.stop()
        if addresses is not None:
            await asyncio.to_thread(addresses.stop)
        if metrics_server is not None:
            metrics_server.stop()
        log.info("agent of node %s stopped; attachments removed", config.node)


def _failure_reason(message: str) -> str:
    text = message.lower()
    for reason, words in (("kernel-headers", ("kernel headers",)), ("bcc", ("bcc",)),
                          ("cgroup", ("cgroup",)), ("privileges", ("not root", "privilege", "capabilit", "permission"))):
        if any(w in text for w in words):
            return reason
    return "other"


async def _start_datapath(datapath, config: Config, metrics, stop: asyncio.Event,  # type: ignore[no-untyped-def]
                          on_failure: Callable[[], None] = lambda: None) -> bool:
    """Start the datapath; with --on-datapath-failure retry, keep trying every DATAPATH_RETRY
    seconds (reporting each failure) until it starts (True) or the agent is stopped (False)."""
    from agent.datapath.errors import DatapathError

    failures = 0
    last = ""
    while True:
        try:
            datapath.start()
        except DatapathError as exc:
            if config.on_datapath_failure == "exit":
                raise
            failures += 1
            on_failure()
            reason = _failure_reason(str(exc))
            metrics.datapath_ready.set(0)
            metrics.datapath_failures.labels(reason=reason).inc()
            if str(exc) != last:
                log.error("The datapath cannot start (%s): %s. Retrying every %g s; meanwhile Imports work through "
                          "the gateway's Import Services, without this node's shortcut.", reason, exc, DATAPATH_RETRY)
                last = str(exc)
            try:
                await asyncio.wait_for(stop.wait(), DATAPATH_RETRY)
                return False
            except TimeoutError:
                continue
        metrics.datapath_ready.set(1)
        if failures:
            log.info("The datapath started after %d failed attempt%s.", failures, "s" if failures > 1 else "")
        return True


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    try:
        setup_logging(config.log_level, config.log_format, component="agent")
    except ValueError as exc:
        print(f"clusterlink-agent: {exc}", file=sys.stderr)
        return 2
    try:
        eventloop.run(run(config), config.event_loop)
    except Exception as exc:  # start-up failures (BCC, headers, cgroup v2, token): one clear line
        log.debug("agent failed", exc_info=exc)
        print(f"clusterlink-agent: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
