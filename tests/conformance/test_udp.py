"""UDP through an Import (an extension: the original ClusterLink carries TCP only): a real DNS
server and a stub-resolver client, iperf3 -u, policies per flow, and the TCP/UDP protocol checks.

The exporting peer's echo pod runs a DNS server on DNS_PORT/udp whose every answer names the
peer (192.0.2.<index>), a UDP echo on UDP_ECHO_PORT and an iperf3 server on IPERF_PORT (TCP
control connection and UDP data on the same port: an Import of protocol TCPAndUDP).
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from fabric.workloads import EXIT_OK

from .fabricutil import allow_all, doc, import_doc, policy

DNS_PORT = 53
UDP_ECHO_PORT = 7
IPERF_PORT = 5201
ANSWERS = {"cl0": "192.0.2.10", "cl1": "192.0.2.11", "cl2": "192.0.2.12"}


@pytest.fixture(scope="module")
def udp_world(world):  # type: ignore[no-untyped-def]
    procs = []
    for name, peer in world.peers.items():
        echo = peer.pods["echo"]
        for argv, label in (
            ([sys.executable, "-m", "fabric.workloads", "dns-server", "--port", str(DNS_PORT),
              "--answer", ANSWERS[name]], "dns-server"),
            ([sys.executable, "-m", "fabric.workloads", "udp-echo", "--port", str(UDP_ECHO_PORT)], "udp-echo"),
            (["iperf3", "-s", "-p", str(IPERF_PORT)], "iperf3"),
        ):
            proc = echo.spawn(argv, name=label)
            procs.append(proc)
            if label == "iperf3":
                proc.wait_tcp(echo.net.netns, echo.ip, IPERF_PORT, timeout=15)
            else:
                proc.wait_log("listening", timeout=15)
    yield world
    for proc in procs:
        proc.stop()


def _udp_import(name: str, sources, port: int, protocol: str = "UDP") -> str:  # type: ignore[no-untyped-def]
    text = import_doc(name, sources, port=port)
    return text.replace("spec:\n", f"spec:\n  protocol: {protocol}\n", 1)


def _exports(w, name: str, port: int, protocol: str, peers=("cl0",)) -> None:  # type: ignore[no-untyped-def]
    for p in peers:
        w.peers[p].apply(allow_all() + "---\n" +
                         doc("LocalService", name, {"host": w.peers[p].pods["echo"].ip}) + "---\n" +
                         doc("Export", name, {"port": port, "protocol": protocol}))
        w.peers[p].wait_condition("Export", name, "ExportValid")


def _json(out) -> dict:  # type: ignore[no-untyped-def]
    assert out.returncode == EXIT_OK, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _until_ok(run, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    """Retry a client until it succeeds (policies and VIPs propagate asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        out = run()
        if out.returncode == EXIT_OK or time.monotonic() > deadline:
            return out
        time.sleep(0.3)


def test_dns_queries_through_a_udp_import_answer_from_the_vip(udp_world, clean):  # type: ignore[no-untyped-def]
    w = udp_world
    _exports(w, "dns", DNS_PORT, "UDP")
    cl1 = w.peers["cl1"]
    cl1.apply(allow_all() + "---\n" + _udp_import("dns", [("cl0", "dns")], DNS_PORT))
    vip = cl1.vip("dns")
    client = w.clients["cl1"]
    out = _until_ok(lambda: client.workload("dns-query", "--host", vip, "--port", str(DNS_PORT),
                                            "--name", "web.example.test", "--count", "5", "--timeout", "3"))
    report = _json(out)
    # Every answer came from cl0's DNS server, and (as a stub resolver insists) from the VIP.
    assert report["answers"] == [ANSWERS["cl0"]] * 5
    assert set(report["sources"]) == {f"{vip}:{DNS_PORT}"}
    assert report["rcodes"] == [0] * 5
    # TCP to the same VIP:port is not carried: the Import is UDP only.
    tcp = client.workload("getpeername", "--host", vip, "--port", str(DNS_PORT), "--timeout", "3")
    assert tcp.returncode != EXIT_OK


def test_connected_and_unconnected_sockets_and_large_datagrams(udp_world, clean):  # type: ignore[no-untyped-def]
    w = udp_world
    _exports(w, "udpecho", UDP_ECHO_PORT, "UDP")
    cl1 = w.peers["cl1"]
    cl1.apply(allow_all() + "---\n" + _udp_import("udpecho", [("cl0", "udpecho")], UDP_ECHO_PORT))
    vip = cl1.vip("udpecho")
    client = w.clients["cl1"]
    for extra, size in ((("--connect",), 1), ((), 1400), (("--connect",), 60000)):
        out = _until_ok(lambda: client.workload("udp-send", "--host", vip, "--port", str(UDP_ECHO_PORT),
                                                "--size", str(size), "--count", "20", *extra))
        report = _json(out)
        assert report["received"] == 20, report
        assert report["sources"] == [f"{vip}:{UDP_ECHO_PORT}"]
        if extra:
            assert report["peer"] == f"{vip}:{UDP_ECHO_PORT}"  # getpeername4 on a connected UDP socket


def test_policies_apply_to_udp_flows(udp_world, clean):  # type: ignore[no-untyped-def]
    w = udp_world
    _exports(w, "dnspol", DNS_PORT, "UDP")
    cl1 = w.peers["cl1"]
    cl1.apply(_udp_import("dnspol", [("cl0", "dnspol")], DNS_PORT))
    vip = cl1.vip("dnspol")
    client = w.clients["cl1"]

    def query():  # type: ignore[no-untyped-def]
        return client.workload("dns-query", "--host", vip, "--port", str(DNS_PORT), "--name", "a.test",
                               "--timeout", "2")

    # cl1 has no egress policy yet: default deny, the query times out (datagrams dropped, none leak).
    assert query().returncode != EXIT_OK
    cl1.apply(allow_all())
    assert _json(_until_ok(query))["answers"] == [ANSWERS["cl0"]]
    # A deny for this client's labels on egress wins over allow-all for new flows; the agent's flow
    # of the last query ends on its idle timeout, so the next query from a new socket is a new flow.
    cl1.apply(policy("deny-client", "deny", src={"client.clusterlink.net/labels.app": "echo-client"}))
    deadline = time.monotonic() + 20
    while query().returncode == EXIT_OK:
        assert time.monotonic() < deadline, "the deny policy never applied to new UDP flows"
        time.sleep(0.3)
    other = w.others["cl1"]
    out = _until_ok(lambda: other.workload("dns-query", "--host", vip, "--port", str(DNS_PORT), "--name", "b.test",
                                           "--timeout", "2"))
    assert _json(out)["answers"] == [ANSWERS["cl0"]]


def test_iperf3_udp_through_a_tcp_and_udp_import(udp_world, clean):  # type: ignore[no-untyped-def]
    w = udp_world
    _exports(w, "iperf", IPERF_PORT, "TCPAndUDP")
    cl1 = w.peers["cl1"]
    cl1.apply(allow_all() + "---\n" + _udp_import("iperf", [("cl0", "iperf")], IPERF_PORT, "TCPAndUDP"))
    vip = cl1.vip("iperf")
    client = w.clients["cl1"]
    out = _until_ok(lambda: client.run(["iperf3", "-u", "-c", vip, "-p", str(IPERF_PORT), "-b", "20M", "-t", "2",
                                        "-l", "1200", "--json"], timeout=30), timeout=30)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    report = json.loads(out.stdout)
    summary = report["end"]["sum"]
    assert summary["packets"] > 1000, summary
    # Loopback fabric, 20 Mbit/s: hardly any loss is expected; a broken relay loses everything.
    assert summary["lost_percent"] < 20, summary


def test_a_tcp_import_of_a_udp_only_export_is_refused_by_the_exporter(udp_world, clean):  # type: ignore[no-untyped-def]
    """A peer that asks for TCP (an original ClusterLink, or a misconfigured Import) gets a 400."""
    w = udp_world
    _exports(w, "udponly", UDP_ECHO_PORT, "UDP")
    cl1 = w.peers["cl1"]
    cl1.apply(allow_all() + "---\n" + import_doc("udponly", [("cl0", "udponly")], port=UDP_ECHO_PORT))
    vip = cl1.vip("udponly")
    # The TCP connect is redirected and accepted by the agent; the gateway chain then resets it:
    # the client sees its connection fail, and cl0 counts the refused tunnel.
    deadline = time.monotonic() + 10
    while True:
        out = w.clients["cl1"].workload("tcp-send", "--host", vip, "--port", str(UDP_ECHO_PORT), "--bytes", "10",
                                        "--timeout", "3")
        assert out.returncode != EXIT_OK, out.stdout + out.stderr
        if "wrong-protocol" in w.peers["cl0"].metrics():
            break
        assert time.monotonic() < deadline, "the exporter never refused the TCP tunnel:\n" + out.stdout + out.stderr
        time.sleep(0.3)
