"""The fabric the benchmark's paths run on, built and torn down as one object.

Peers east (nodes n1, n2) and west (node n1); pods east/n1/client, east/n2/server, west/n1/server.
Each server pod runs `iperf3 -s` (bulk, TCP and UDP on one port) and `bench.echo` (requests). West
exports both services (`bench-iperf` as TCPAndUDP), east imports them; an allow-all policy on each
side. East's node n1 runs the real agent (the full path's VIP redirect, TCP and UDP); west runs none
(its side of the path has no agent). The agent_hop relay (`bench.splicehop`) runs in node n1; the
HAProxy pair in the two gateway netns.

Everything is stopped by PID and removed on `close()`, also after a failure or Ctrl-C (the
fabric's process group owns every process started here, HAProxy included).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import yaml

from bench import haproxy, paths
from bench.haproxy import HAProxyPair, Route
from fabric import netns
from fabric.peer import ClusterLinkFabric, Peer, Pod
from fabric.places import Place
from fabric.process import Proc

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
IPERF_PORT = 5201
ECHO_PORT = 7000
SPLICE_PORT = 15101
HAPROXY_PORTS = {"iperf": (21000, 21443), "echo": (21001, 21444)}
SERVICE_PORTS = {"iperf": IPERF_PORT, "echo": ECHO_PORT}
IMPORTS = {"iperf": "bench-iperf", "echo": "bench-echo"}
# bench-iperf carries TCP and UDP on the same VIP:port (and gateway target port): iperf3 -u keeps its
# TCP control connection on the port its datagrams go to. bench-echo stays TCP (no protocol: TCP).
PROTOCOLS = {"iperf": {"protocol": "TCPAndUDP"}}
READY_TIMEOUT_S = 30.0
# Namespaces whose processes open many short connections to one address: the client (it closes
# first, so the TIME_WAIT ports are its own) and each gateway netns (the gateways, and the HAProxy
# pair beside them, connect to the same server for every request). With tcp_tw_reuse=0 (the
# kernel's default outside loopback) connect() skips every port in TIME_WAIT towards that address:
# past about 14,000 of them in 60 s (half the default port range, the half connect() tries first)
# every connect() scans thousands of ports, and a run measures the kernel's port search instead of
# the path (bench/README.md, "Method"; the chart's gateway.sysctls for deployments).
TIME_WAIT_REUSE = {"net.ipv4.tcp_tw_reuse": 1}

ALLOW_ALL = """apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {name: bench-allow-all, namespace: default}
spec:
  action: allow
  from: [{workloadSelector: {}}]
  to: [{workloadSelector: {}}]
"""


def manifest(kind: str, name: str, spec: dict) -> str:
    return yaml.safe_dump({"apiVersion": "clusterlink.net/v1alpha1", "kind": kind,
                           "metadata": {"name": name, "namespace": "default"}, "spec": spec}, sort_keys=False)


class NotReady(RuntimeError):
    """A path does not carry traffic within the set-up time."""


class World:
    """Use as a context manager: `with World(threads=1) as w: w.start(); ...`."""

    def __init__(self, *, threads: int = 1, keep_logs: Path | None = None) -> None:
        self.threads = threads
        self.keep_logs = keep_logs
        self.fab = ClusterLinkFabric(gateway_workers=threads)
        self.east: Peer | None = None
        self.west: Peer | None = None
        self.client: Pod | None = None
        self.servers: dict[str, Pod] = {}                 # "east" / "west"
        self.server_procs: dict[tuple[str, str], Proc] = {}  # (side, "iperf" | "echo")
        self.splice: Proc | None = None
        self.haproxy: HAProxyPair | None = None
        self.vips: dict[str, str] = {}
        self.target_ports: dict[str, int] = {}

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- set-up ------------------------------------------------------------------------------------
    def start(self) -> None:
        fab = self.fab
        self.east = east = fab.add_peer("east", nodes=("n1", "n2"), labels={"region": "east"})
        self.west = west = fab.add_peer("west", labels={"region": "west"})
        self.client = east.add_pod("client", node="n1", labels={"app": "bench-client"})
        self.servers = {"east": east.add_pod("server", node="n2", labels={"app": "bench-server"}),
                        "west": west.add_pod("server", node="n1", labels={"app": "bench-server"})}
        fab.start(agents=False)
        for ns in (self.client.net.netns, east.net.netns, west.net.netns):
            netns.sysctl(ns, TIME_WAIT_REUSE)
        east.start_agent("n1")
        for side, pod in self.servers.items():
            self.server_procs[(side, "iperf")] = self._start_iperf_server(pod)
            self.server_procs[(side, "echo")] = self._start_echo_server(pod)
        fab.wait_reachable(timeout=READY_TIMEOUT_S)
        self._export_and_import()
        node = east.node("n1")
        self.splice = node.spawn([sys.executable, "-m", "bench.splicehop",
                                  "--listen", f"{node.pod_gateway_ip}:{SPLICE_PORT}",
                                  "--upstream", f"{self.servers['east'].ip}:{IPERF_PORT}"],
                                 log_path=east.dir / "logs" / "splicehop.log", env={"PYTHONPATH": str(ROOT)})
        self.splice.wait_tcp(node.netns, node.pod_gateway_ip, SPLICE_PORT, timeout=10)
        self._start_haproxy()
        for path in paths.REQUEST_PATHS:
            self._wait_echo(path)

    def _start_iperf_server(self, pod: Pod) -> Proc:
        proc = pod.net.spawn(["iperf3", "-s", "-p", str(IPERF_PORT)],
                             log_path=pod.peer.dir / "logs" / f"{pod.name}-iperf3.log")
        proc.wait_tcp(pod.net.netns, pod.ip, IPERF_PORT, timeout=10)
        return proc

    def _start_echo_server(self, pod: Pod) -> Proc:
        proc = pod.net.spawn([sys.executable, "-m", "bench.echo", "--port", str(ECHO_PORT)],
                             log_path=pod.peer.dir / "logs" / f"{pod.name}-echo.log", env={"PYTHONPATH": str(ROOT)})
        proc.wait_tcp(pod.net.netns, pod.ip, ECHO_PORT, timeout=10)
        return proc

    def restart_iperf_server(self, side: str) -> None:
        """After a failed run: iperf3 -s can stay stuck in the failed test ("the server is busy")."""
        old = self.server_procs.pop((side, "iperf"))
        old.stop()
        self.server_procs[(side, "iperf")] = self._start_iperf_server(self.servers[side])

    def _export_and_import(self) -> None:
        assert self.east is not None and self.west is not None
        west_server = self.servers["west"]
        docs = []
        for s, name in IMPORTS.items():
            docs += [manifest("LocalService", name, {"host": west_server.ip}),
                     manifest("Export", name, {"port": SERVICE_PORTS[s], **PROTOCOLS.get(s, {})})]
        self.west.apply("---\n".join(docs + [ALLOW_ALL]))
        for service in IMPORTS.values():
            self.west.wait_condition("Export", service, "ExportValid", timeout=READY_TIMEOUT_S)
        imports = [manifest("Import", IMPORTS[s], {"port": SERVICE_PORTS[s], **PROTOCOLS.get(s, {}), "sources": [
            {"peer": "west", "exportName": IMPORTS[s], "exportNamespace": "default"}]}) for s in IMPORTS]
        self.east.apply("---\n".join(imports + [ALLOW_ALL]))
        for s, name in IMPORTS.items():
            self.vips[s] = self.east.vip(name, timeout=READY_TIMEOUT_S)
            self.target_ports[s] = self.east.target_port(name, timeout=READY_TIMEOUT_S)

    def _start_haproxy(self) -> None:
        assert self.east is not None and self.west is not None
        routes = [Route(name=s, a_listen=(self.east.lan_ip, HAPROXY_PORTS[s][0]),
                        b_listen=(self.west.wan_ip, HAPROXY_PORTS[s][1]),
                        server=(self.servers["west"].ip, SERVICE_PORTS[s])) for s in SERVICE_PORTS]
        self.haproxy = HAProxyPair(self.fab.workdir / "haproxy", a_place=self.east.net, b_place=self.west.net,
                                   a_cert_dir=self.east.certs, b_cert_dir=self.west.certs, a_name="east",
                                   b_name="west", routes=routes, threads=self.threads)
        self.haproxy.start()

    def _wait_echo(self, path: str) -> None:
        """A few request/responses through `path` succeed (policies and snapshots propagate asynchronously)."""
        host, port = self.endpoint(path, "echo")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            out = self.run_in(self.client_place(path), [sys.executable, "-m", "bench.client", "conn", "--host", host,
                                                        "--port", str(port), "--count", "3", "--timeout", "2",
                                                        "--max-seconds", "10"], timeout=30)
            result = json.loads(out.stdout) if out.returncode in (0, 1) and out.stdout.strip() else None
            if result and result["completed"] == 3 and not result["errors"]:
                return
            if time.monotonic() > deadline:
                raise NotReady(f"{path} ({host}:{port}) does not echo after {READY_TIMEOUT_S:g} s: "
                               f"{out.stdout.strip()} {out.stderr.strip()}")
            time.sleep(0.3)

    # -- what the runs need ------------------------------------------------------------------------
    def run_in(self, place: Place, argv: list[str], *, timeout: float):  # type: ignore[no-untyped-def]
        """Run a client in a place of the fabric, with this package importable."""
        return place.run(argv, timeout=timeout, env={"PYTHONPATH": str(ROOT)})

    def client_place(self, path: str) -> Place:
        if path == paths.LOOPBACK:
            return self.servers["east"].net
        assert self.client is not None
        return self.client.net

    def endpoint(self, path: str, service: str) -> tuple[str, int]:
        """Where the client of `path` connects for `service` ("iperf" or "echo")."""
        assert self.east is not None
        if path == paths.LOOPBACK:
            return "127.0.0.1", SERVICE_PORTS[service]
        if path == paths.DIRECT:
            return self.servers["east"].ip, SERVICE_PORTS[service]
        if path == paths.AGENT_HOP:
            if service != "iperf":
                raise ValueError("agent_hop carries only the bulk service")
            return self.east.node("n1").pod_gateway_ip, SPLICE_PORT
        if path == paths.FULL_PATH:
            return self.vips[service], SERVICE_PORTS[service]
        if path == paths.FULL_PATH_NO_AGENT:
            return self.east.lan_ip, self.target_ports[service]
        if path == paths.HAPROXY_PATH:
            return self.east.lan_ip, HAPROXY_PORTS[service][0]
        raise ValueError(f"unknown path {path!r}")

    def server_pid(self, path: str, service: str) -> int:
        return self.server_procs[(paths.SERVER_SIDE[path], service)].pid

    def components(self) -> dict[str, int]:
        """Root pid of every long-running component (its process tree is sampled)."""
        assert self.east is not None and self.west is not None and self.haproxy is not None
        assert self.east.gateway and self.west.gateway and self.east.controlplane and self.west.controlplane
        assert self.splice is not None and self.haproxy.a is not None and self.haproxy.b is not None
        return {"agent": self.east.agents["n1"].pid, "splice_proxy": self.splice.pid,
                "gateway_east": self.east.gateway.pid, "gateway_west": self.west.gateway.pid,
                "controlplane_east": self.east.controlplane.pid, "controlplane_west": self.west.controlplane.pid,
                "haproxy_a": self.haproxy.a.pid, "haproxy_b": self.haproxy.b.pid}

    def memory_components(self) -> dict[str, int]:
        """The components whose RSS the report gives (idle and under load)."""
        c = self.components()
        return {"agent": c["agent"], "controlplane": c["controlplane_east"], "gateway_east": c["gateway_east"],
                "gateway_west": c["gateway_west"], "haproxy_a": c["haproxy_a"], "haproxy_b": c["haproxy_b"]}

    def tls_probe(self) -> dict[str, object]:
        """The TLS version and cipher our west gateway and HAProxy B negotiate with east's certificate."""
        assert self.east is not None and self.west is not None
        certs = self.east.certs
        out: dict[str, object] = {}
        for name, port in (("gateway", 443), ("haproxy", HAPROXY_PORTS["echo"][1])):
            result = self.run_in(self.east.net, [sys.executable, "-m", "bench.tlsprobe", "--host", self.west.wan_ip,
                                                 "--port", str(port), "--cert", str(certs / "cert.pem"),
                                                 "--key", str(certs / "key.pem"), "--ca", str(certs / "ca.pem"),
                                                 "--server-name", "west"], timeout=20)
            if result.returncode != 0:
                raise RuntimeError(f"TLS probe of the west {name} failed: {result.stderr.strip()}")
            out[name] = json.loads(result.stdout)
        return out

    def logs(self) -> str:
        text = self.fab.logs()
        if self.haproxy is not None:
            for log_path in sorted(self.haproxy.dir.glob("*.log")):
                text += f"\n==== {log_path.name}\n" + "\n".join(log_path.read_text(errors='replace').splitlines()[-40:])
        return text

    def haproxy_version(self) -> dict[str, str]:
        return haproxy.version()

    def save_logs(self, target: Path) -> None:
        """Copy every process log of the fabric (and HAProxy's) to `target`, which is kept."""
        for log_path in self.fab.workdir.glob("**/*.log"):
            dest = target / log_path.relative_to(self.fab.workdir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log_path, dest)

    def close(self) -> None:
        try:
            if self.haproxy is not None:
                self.haproxy.stop()
        finally:
            try:
                if self.keep_logs is not None:
                    self.save_logs(self.keep_logs)
            finally:
                self.fab.close()
