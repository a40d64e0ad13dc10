"""Import target ports, TCP and UDP, kept in line with the wanted set on loopback: a port that is
taken is counted and retried, never fatal; removed ports are closed."""

from __future__ import annotations

import asyncio
import socket

from controlplane.gateway.listeners import Listeners
from controlplane.gateway.metrics import GatewayMetrics
from controlplane.peerwire.stream import TcpStream


def _free_port() -> int:
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp.bind(("127.0.0.1", port))  # free for both protocols
        return port


def _errors(metrics: GatewayMetrics, listener: str) -> float:
    return metrics.registry.get_sample_value("clusterlink_gateway_listener_errors_total", {"listener": listener}) or 0


def test_taken_ports_are_counted_and_retried_and_removed_ones_close() -> None:
    async def scenario() -> None:
        metrics = GatewayMetrics()
        listeners = Listeners(metrics)
        free, taken = _free_port(), _free_port()
        squatter_tcp = socket.socket()
        squatter_tcp.bind(("127.0.0.1", taken))
        squatter_tcp.listen()
        squatter_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        squatter_udp.bind(("127.0.0.1", taken))
        flows: list[int] = []
        try:
            await listeners.reconcile_imports("127.0.0.1", {free, taken}, lambda port: TcpStream)
            await listeners.reconcile_udp_imports("127.0.0.1", {free, taken}, lambda port, s: flows.append(port),
                                                  idle_timeout=5)
            assert listeners.import_ports == {free} and listeners.udp_import_ports == {free}
            assert _errors(metrics, "import") == 1 and _errors(metrics, "import-udp") == 1
            squatter_tcp.close()
            squatter_udp.close()
            await listeners.reconcile_imports("127.0.0.1", {free, taken}, lambda port: TcpStream)
            await listeners.reconcile_udp_imports("127.0.0.1", {free, taken}, lambda port, s: flows.append(port),
                                                  idle_timeout=5)
            assert listeners.import_ports == {free, taken} and listeners.udp_import_ports == {free, taken}
            # a datagram to a UDP target port starts a flow
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"x", ("127.0.0.1", taken))
                for _ in range(100):
                    await asyncio.sleep(0.01)
                    if flows:
                        break
            assert flows == [taken]
            await listeners.reconcile_imports("127.0.0.1", set(), lambda port: TcpStream)
            await listeners.reconcile_udp_imports("127.0.0.1", set(), lambda port, s: None, idle_timeout=5)
            assert listeners.import_ports == set() and listeners.udp_import_ports == set()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
                again.bind(("127.0.0.1", taken))  # closed: the port is free again
        finally:
            squatter_tcp.close()
            squatter_udp.close()
            listeners.close()

    asyncio.run(scenario())
