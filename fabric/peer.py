"""ClusterLink peers on the simulated fabric: certificates, control planes, gateways, agents, pods.

`ClusterLinkFabric` adds the product to a `Topology`: per peer a certificate from one fabric CA, a
control plane and a gateway in the peer's gateway netns, optionally an agent per node; pods with a
standalone `Workload` object each. It talks to each control plane through its management API, the
way a user does with `clusterlink`. Everything stops (by PID) and is removed on `close()`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from controlplane import pki
from controlplane.api.client import ControlPlaneClient, Endpoint, Rollout
from fabric import netns
from fabric.process import Proc
from fabric.topology import NodeNet, PeerNet, PodNet, Topology

log = logging.getLogger(__name__)

PEER_PORT = 443
AGENT_PORT = 4443
GATEWAY_METRICS = 9090
CONTROLPLANE_METRICS = 9091
AGENT_METRICS = 9092
PROXY_PORT = 15001
APPLY_WAIT = 10.0  # seconds apply/delete wait for the peer's gateways and agents to confirm a change
BIN = Path(sys.executable).parent


def _bin(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make install`")
    return str(path)


class Pod:
    """A workload: a netns + cgroup on a node, known to its control plane as a Workload."""

    def __init__(self, peer: Peer, net: PodNet, namespace: str, labels: Mapping[str, str], service_account: str):
        self.peer = peer
        self.net = net
        self.namespace = namespace
        self.labels = dict(labels)
        self.service_account = service_account

    @property
    def name(self) -> str:
        return self.net.name

    @property
    def ip(self) -> str:
        return self.net.ip

    @property
    def ip6(self) -> str:
        return self.net.ip6

    def workload_manifest(self) -> dict[str, Any]:
        mount = self.peer.fabric.topology.cgroup_root
        return {"apiVersion": "clusterlink.net/v1alpha1", "kind": "Workload",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels},
                "spec": {"cgroup": "/" + str(self.net.cgroup.relative_to(mount)), "node": self.net.node.name,
                         "serviceAccount": self.service_account}}

    def spawn(self, argv: Sequence[str], *, name: str) -> Proc:
        return self.net.spawn(argv, log_path=self.peer.dir / "logs" / f"{self.name}-{name}.log")

    def run(self, argv: Sequence[str], *, timeout: float = 30.0, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        return self.net.run(argv, timeout=timeout, input=input)

    def workload(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run one of fabric.workloads' client commands in this pod."""
        return self.run([sys.executable, "-m", "fabric.workloads", *args], timeout=timeout)

    def serve_http_echo(self, port: int, name: str | None = None) -> Proc:
        proc = self.spawn([sys.executable, "-m", "fabric.workloads", "http-echo", "--name", name or self.peer.name,
                           "--port", str(port)], name=f"http-echo-{port}")
        proc.wait_tcp(self.net.netns, self.ip, port, timeout=10)
        return proc

    def http_get(self, url: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        return self.workload("http-get", url, "--timeout", str(timeout), timeout=timeout + 10)


class Peer:
    def __init__(self, fabric: ClusterLinkFabric, net: PeerNet, labels: Mapping[str, str], *,
                 vip_range: str = "") -> None:
        self.fabric = fabric
        self.net = net
        self.labels = dict(labels)
        self.vip_range = vip_range  # the control plane's --vip-range ("" for its default)
        self.pods: dict[str, Pod] = {}
        self.controlplane: Proc | None = None
        self.gateway: Proc | None = None
        self.agents: dict[str, Proc] = {}
        self.last_rollout: Rollout | None = None  # of the last apply/delete

    # -- names and places --------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.net.name

    @property
    def dir(self) -> Path:
        return self.fabric.workdir / self.name

    @property
    def certs(self) -> Path:
        return self.fabric.certs_root / self.fabric.fabric_name / self.name

    @property
    def api_socket(self) -> Path:
        return self.dir / "api.sock"

    @property
    def admin_token_file(self) -> Path:
        return self.dir / "admin.token"

    @property
    def join_token_file(self) -> Path:
        return self.dir / "join.token"

    @property
    def wan_ip6(self) -> str:
        return self.net.wan_ip6

    @property
    def wan_ip(self) -> str:
        return self.net.wan_ip

    @property
    def lan_ip(self) -> str:
        return self.net.lan_ip

    def node(self, name: str) -> NodeNet:
        return self.net.nodes[name]

    def env(self) -> dict[str, str]:
        """Environment for `clusterlink` commands against this peer's control plane."""
        return {"CLUSTERLINK_CONTROLPLANE": f"unix:{self.api_socket}",
                "CLUSTERLINK_TOKEN_FILE": str(self.admin_token_file)}

    def peer_manifest(self) -> str:
        """The Peer object other peers apply to reach this one."""
        return yaml.safe_dump({"apiVersion": "clusterlink.net/v1alpha1", "kind": "Peer",
                               "metadata": {"name": self.name, "namespace": "clusterlink-system"},
                               "spec": {"gateways": [{"host": self.wan_ip, "port": PEER_PORT}]}}, sort_keys=False)

    # -- processes ---------------------------------------------------------------------------------
    def start_controlplane(self) -> Proc:
        argv = [_bin("clusterlink-controlplane"), "--certs", str(self.certs),
                "--store", f"sqlite://{self.dir / 'state.db'}", "--api-listen", f"unix:{self.api_socket}",
                "--admin-token-file", str(self.admin_token_file), "--join-token-file", str(self.join_token_file),
                "--gateway-agent-address", f"{self.lan_ip}:{AGENT_PORT}",
                "--metrics-listen", f"{self.lan_ip}:{CONTROLPLANE_METRICS}", "--log-format", "text"]
        for k, v in self.labels.items():
            argv += ["--peer-label", f"{k}={v}"]
        if self.vip_range:
            argv += ["--vip-range", self.vip_range]
        self.controlplane = self.net.spawn(argv, log_path=self.dir / "logs" / "controlplane.log")
        self.controlplane.wait_unix(self.api_socket, timeout=20)
        return self.controlplane

    def stop_controlplane(self) -> None:
        if self.controlplane is not None:
            self.controlplane.stop()
            self.controlplane = None

    def start_gateway(self, workers: int | None = None) -> Proc:
        argv = [_bin("clusterlink-gateway"), "--certs", str(self.certs), "--controlplane", f"unix:{self.api_socket}",
                "--join-token-file", str(self.join_token_file), "--peer-listen", f"[::]:{PEER_PORT}",
                # only the peer port on the WAN side: the others on the LAN address, where their
                # clients (agents, pods, a scraper) are
                "--agent-listen", f"{self.lan_ip}:{AGENT_PORT}", "--import-host", self.lan_ip,
                "--metrics-listen", f"{self.lan_ip}:{GATEWAY_METRICS}",
                "--workers", str(workers or self.fabric.gateway_workers), "--drain-timeout", "2",
                "--log-format", "text"]
        # its runtime directory (metrics, counters) goes under the peer's directory, removed with the fabric
        self.gateway = self.net.spawn(argv, log_path=self.dir / "logs" / "gateway.log", env={"TMPDIR": str(self.dir)})
        self.gateway.wait_tcp(self.net.netns, self.lan_ip, PEER_PORT, timeout=30)
        return self.gateway

    def stop_gateway(self) -> None:
        if self.gateway is not None:
            self.thaw_gateway()  # a stopped process would sit on its SIGTERM
            self.gateway.stop()
            self.gateway = None

    # -- faults (the failover tests and the benchmark's failover section) ---------------------------
    PARTITION_TABLE = "clpartition"

    def kill_gateway(self) -> None:
        """kill -9 the gateway, supervisor and workers (its process group): a crash or an OOM kill.
        Its sockets are closed by the kernel: peers see resets and refused connects."""
        if self.gateway is not None:
            self.gateway.kill()
            self.gateway = None

    def freeze_gateway(self) -> None:
        """SIGSTOP the gateway's process group: it refuses nothing and answers nothing (a hung host)."""
        if self.gateway is None:
            raise RuntimeError(f"peer {self.name} has no gateway running")
        os.killpg(self.gateway.pid, signal.SIGSTOP)

    def thaw_gateway(self) -> None:
        if self.gateway is not None and self.gateway.alive:
            os.killpg(self.gateway.pid, signal.SIGCONT)

    def partition(self) -> None:
        """Drop (not refuse) every packet between this peer's gateway netns and the WAN, both ways,
        until `heal`: a cut link. Its own LAN (agents, pods) is untouched."""
        wan = self.net.wan_interface
        netns.nft(self.net.netns, f"""table inet {self.PARTITION_TABLE} {{
    chain input {{ type filter hook input priority -10; iifname "{wan}" drop; }}
    chain output {{ type filter hook output priority -10; oifname "{wan}" drop; }}
}}
""")

    def heal(self) -> None:
        netns.nft(self.net.netns, f"delete table inet {self.PARTITION_TABLE}\n")

    def start_agent(self, node: str = "n1") -> Proc:
        net = self.node(node)
        argv = [_bin("clusterlink-agent"), "--node", node, "--cgroup", str(net.pods_cgroup),
                "--controlplane", f"unix:{self.api_socket}", "--join-token-file", str(self.join_token_file),
                "--proxy-address", net.pod_gateway_ip, "--proxy-address6", "auto",  # finds net.pod_gateway_ip6
                "--proxy-port", str(PROXY_PORT),
                "--metrics-listen", f"0.0.0.0:{AGENT_METRICS}", "--log-format", "text"]
        proc = net.spawn(argv, log_path=self.dir / "logs" / f"agent-{node}.log")
        self.agents[node] = proc
        proc.wait_tcp(net.netns, net.pod_gateway_ip, PROXY_PORT, timeout=30)
        return proc

    def stop_agent(self, node: str = "n1") -> None:
        proc = self.agents.pop(node, None)
        if proc is not None:
            proc.stop()

    # -- pods --------------------------------------------------------------------------------------
    def add_pod(self, name: str, *, node: str = "n1", namespace: str = "default",
                labels: Mapping[str, str] | None = None, service_account: str = "default") -> Pod:
        net = self.node(node).add_pod(name)
        pod = Pod(self, net, namespace, labels or {"app": name}, service_account)
        self.pods[name] = pod
        if self.fabric.started:
            self.fabric.topology.build()
            self.apply(yaml.safe_dump(pod.workload_manifest()))
        return pod

    # -- management API ----------------------------------------------------------------------------
    def _endpoint(self) -> Endpoint:
        return Endpoint(address=f"unix:{self.api_socket}", token=self.admin_token_file.read_text().strip())

    def _api(self, fn):  # type: ignore[no-untyped-def]
        async def go():  # type: ignore[no-untyped-def]
            async with ControlPlaneClient(self._endpoint()) as client:
                return await fn(client)

        return asyncio.run(go())

    def apply(self, text: str, *, wait: float = APPLY_WAIT) -> list[str]:
        """Store objects; returns once this peer's gateways and agents confirmed the change is in
        force (or `wait` passed: `last_rollout` says where it stands)."""
        applied = self._api(lambda c: c.apply(text, wait=wait))
        self.last_rollout = applied.rollout
        return applied.results

    def delete(self, kind: str, name: str, namespace: str = "default", *, wait: float = APPLY_WAIT) -> bool:
        self.last_rollout = self._api(lambda c: c.delete(kind, namespace, name, wait=wait))
        return True

    def get(self, kind: str, name: str = "", namespace: str = "") -> list[dict[str, Any]]:
        return json.loads(self._api(lambda c: c.get(kind, namespace, name)))

    def cli(self, *args: str, input: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run the `clusterlink` command against this peer (in the caller's namespace: it uses the unix socket)."""
        import os

        env = dict(os.environ)
        env.update(self.env())
        return subprocess.run([_bin("clusterlink"), *args], env=env, input=input, capture_output=True, text=True,
                              timeout=timeout)

    def condition(self, kind: str, name: str, type_: str, namespace: str = "default") -> dict[str, Any] | None:
        objs = self.get(kind, name, namespace)
        for cond in (objs[0].get("status") or {}).get("conditions") or []:
            if cond["type"] == type_:
                return cond
        return None

    def wait_condition(self, kind: str, name: str, type_: str, status: str = "True", *, namespace: str = "default",
                       timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        cond = None
        while time.monotonic() < deadline:
            cond = self.condition(kind, name, type_, namespace)
            if cond and cond["status"] == status:
                return cond
            time.sleep(0.1)
        raise TimeoutError(f"{kind} {namespace}/{name} of peer {self.name}: {type_} is not {status} after "
                           f"{timeout} s (last: {cond})")

    def target_port(self, import_name: str, namespace: str = "default", timeout: float = 15.0) -> int:
        self.wait_condition("Import", import_name, "ImportTargetPortValid", namespace=namespace, timeout=timeout)
        return int(self.get("Import", import_name, namespace)[0]["spec"]["targetPort"])

    def vip(self, import_name: str, namespace: str = "default", timeout: float = 15.0) -> str:
        self.wait_condition("Import", import_name, "ImportServiceValid", namespace=namespace, timeout=timeout)
        return str(self.get("Import", import_name, namespace)[0]["status"]["vip"])

    def metrics(self, component: str = "gateway") -> str:
        """The /metrics text of a component (fetched from inside its netns)."""
        port = {"gateway": GATEWAY_METRICS, "controlplane": CONTROLPLANE_METRICS}[component]
        out = self.net.run(["curl", "-sS", "--max-time", "5", f"http://{self.lan_ip}:{port}/metrics"], timeout=10)
        if out.returncode != 0:
            raise RuntimeError(f"cannot read {component} metrics of {self.name}: {out.stderr.strip()}")
        return out.stdout


class ClusterLinkFabric:
    """N ClusterLink peers on one machine. Use as a context manager."""

    def __init__(self, *, workdir: Path | None = None, gateway_workers: int = 1, fabric_name: str = "default_fabric"):
        self.topology = Topology()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"{self.topology.prefix}-"))
        self.certs_root = self.workdir / "certs"
        self.fabric_name = fabric_name
        self.gateway_workers = gateway_workers
        self.peers: dict[str, Peer] = {}
        self.started = False

    def __enter__(self) -> ClusterLinkFabric:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_peer(self, name: str, *, nodes: Sequence[str] = ("n1",), labels: Mapping[str, str] | None = None,
                 vip_range: str = "") -> Peer:
        """`vip_range`: the peer's --vip-range (e.g. in fabric.places.VIP6_RANGE for IPv6 VIPs)."""
        net = self.topology.add_peer(name)
        for node in nodes:
            net.add_node(node)
        peer = Peer(self, net, labels or {}, vip_range=vip_range)
        self.peers[name] = peer
        return peer

    def start(self, *, agents: bool = False, connect: bool = True) -> None:
        """Build the network, issue certificates, start every control plane and gateway (and agents);
        with `connect`, every peer learns every other peer (Peer objects)."""
        self.topology.build()
        pki.create_fabric(self.certs_root, self.fabric_name)
        for peer in self.peers.values():
            peer.dir.mkdir(parents=True, exist_ok=True)
            pki.create_peer_cert(self.certs_root, peer.name, fabric=self.fabric_name)
        for peer in self.peers.values():
            peer.start_controlplane()
        for peer in self.peers.values():
            workloads = [p.workload_manifest() for p in peer.pods.values()]
            if workloads:
                peer.apply(yaml.safe_dump_all(workloads))
            peer.start_gateway()
            if agents:
                for node in peer.net.nodes:
                    peer.start_agent(node)
        self.started = True
        if connect:
            for peer in self.peers.values():
                others = [p.peer_manifest() for p in self.peers.values() if p is not peer]
                if others:
                    peer.apply("---\n".join(others))

    def wait_reachable(self, timeout: float = 30.0) -> None:
        for peer in self.peers.values():
            for other in self.peers.values():
                if other is not peer:
                    peer.wait_condition("Peer", other.name, "PeerReachable", namespace="clusterlink-system",
                                        timeout=timeout)

    def logs(self) -> str:
        """Every process log, for a failing test's report."""
        parts = []
        for path in sorted(self.workdir.glob("*/logs/*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"==== {path.relative_to(self.workdir)} (last 40 lines)\n" +
                         "\n".join(text.splitlines()[-40:]))
        return "\n".join(parts)

    def close(self) -> None:
        try:
            self.topology.destroy()
        finally:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

