"""The pod workloads, used across the fabric: servers answer, clients say how each connection ended."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

from fabric import Topology
from fabric.workloads import (
    EXIT_CLOSED,
    EXIT_HTTP_STATUS,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_RESET,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
)
from tests.integration.fabric.support import WORKLOADS, http_echo, http_get, privileged, start_server, tcp_send

pytestmark = privileged

# Servers that misbehave on purpose: answer an HTTP request with a reset, or with a bare close.
RESETTER = """
import socket, struct, sys
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("resetter listening on", sys.argv[1], flush=True)
while True:
    conn, _ = srv.accept()
    conn.recv(65536)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
"""
CLOSER = RESETTER.replace("resetter", "closer").replace(
    '    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))\n', ""
)


def pods(fabric: Topology):
    a = fabric.peers["a"]
    return a.nodes["n1"].pods["p1"], a.nodes["n1"].pods["p2"], a.nodes["n2"].pods["p3"]


def test_http_echo_names_the_server_and_echoes_the_request(fabric: Topology, tmp_path: Path) -> None:
    p1, _, p3 = pods(fabric)
    http_echo(p3, "backend-3", 9080, tmp_path)
    result = http_get(p1, f"http://{p3.ip}:9080/some/path?q=1")
    assert result.returncode == EXIT_OK, result.stderr
    body = json.loads(result.stdout)
    assert body == {
        "server": "backend-3",
        "method": "GET",
        "path": "/some/path?q=1",
        "client": body["client"],
        "host": f"{p3.ip}:9080",
        "body_bytes": 0,
    }
    assert body["client"].startswith(p1.ip + ":")
    posted = p1.run(WORKLOADS + ["http-get", f"http://{p3.ip}:9080/up", "--method", "POST", "--data", "x" * 1000], check=True)
    assert json.loads(posted.stdout)["body_bytes"] == 1000


def test_http_echo_keeps_serving_many_and_concurrent_clients(fabric: Topology, tmp_path: Path) -> None:
    p1, p2, p3 = pods(fabric)
    http_echo(p2, "busy", 9081, tmp_path)
    code = (
        "import concurrent.futures as cf, http.client, sys\n"
        "def get(i):\n"
        "    c = http.client.HTTPConnection(sys.argv[1], 9081, timeout=10)\n"
        "    for j in range(5):\n"
        "        c.request('GET', f'/{i}/{j}'); r = c.getresponse(); assert r.status == 200, r.status; r.read()\n"
        "    c.close(); return i\n"
        "with cf.ThreadPoolExecutor(20) as ex: print(sum(ex.map(get, range(100))))\n"
    )
    result = p3.run([sys.executable, "-c", code, p2.ip], timeout=60, check=True)
    assert result.stdout.strip() == str(sum(range(100)))  # 100 keep-alive connections x 5 requests


def test_http_get_exit_status_says_how_it_ended(fabric: Topology, tmp_path: Path) -> None:
    p1, p2, _ = pods(fabric)
    start_server(p2, ["sink", "--port", "9090"], tmp_path)  # accepts, never answers
    resetter = p2.spawn([sys.executable, "-c", RESETTER, "9091"], log_path=tmp_path / "resetter.log")
    closer = p2.spawn([sys.executable, "-c", CLOSER, "9092"], log_path=tmp_path / "closer.log")
    resetter.wait_log("listening")
    closer.wait_log("listening")
    cases = {
        f"http://{p2.ip}:9099/": EXIT_REFUSED,  # nothing listens
        f"http://{p2.ip}:9090/": EXIT_TIMEOUT,
        f"http://{p2.ip}:9091/": EXIT_RESET,
        f"http://{p2.ip}:9092/": EXIT_CLOSED,
        "http://10.96.0.5/": EXIT_UNREACHABLE,  # the VIP range, with nothing redirecting it
    }
    for url, expected in cases.items():
        result = http_get(p1, url, timeout=1)
        assert result.returncode == expected, (url, result.stderr)


def test_http_get_reports_a_non_2xx_answer(fabric: Topology, tmp_path: Path) -> None:
    p1, p2, _ = pods(fabric)
    http_echo(p2, "strict", 9082, tmp_path)
    result = p1.run(WORKLOADS + ["http-get", f"http://{p2.ip}:9082/", "--method", "BREW"], timeout=30)
    assert result.returncode == EXIT_HTTP_STATUS, result.stderr
    assert "HTTP 501" in result.stderr


def test_tcp_echo_returns_every_byte_after_a_half_close(fabric: Topology, tmp_path: Path) -> None:
    p1, _, p3 = pods(fabric)
    start_server(p3, ["tcp-echo", "--port", "7001"], tmp_path)
    report = tcp_send(p1, p3.ip, 7001, 3 * 1024 * 1024 + 17)
    assert report["received"] == report["sent"] == 3 * 1024 * 1024 + 17
    assert report["received_sha256"] == report["sha256"]
    assert tcp_send(p1, p3.ip, 7001, 0)["received"] == 0  # an immediate half-close still gets a clean close


def test_sink_reports_count_and_checksum(fabric: Topology, tmp_path: Path) -> None:
    p1, _, p3 = pods(fabric)
    sink = start_server(p1, ["sink", "--port", "7002"], tmp_path)
    nbytes = 5_000_003
    report = tcp_send(p3, p1.ip, 7002, nbytes)
    expected = hashlib.sha256(random.Random(0).randbytes(nbytes)).hexdigest()
    assert report["sha256"] == expected  # tcp-send's bytes are reproducible from the seed
    assert report["reply"] == f"{nbytes} {expected}\n"
    assert sink.wait_log(rf"sink: {p3.ip}:\d+ sent {nbytes} {expected}").group(0)


def test_getpeername_prints_both_ends(fabric: Topology, tmp_path: Path) -> None:
    p1, _, p3 = pods(fabric)
    start_server(p3, ["tcp-echo", "--port", "7003"], tmp_path)
    result = p1.run(WORKLOADS + ["getpeername", "--host", p3.ip, "--port", "7003"], check=True)
    ends = json.loads(result.stdout)
    assert ends["peer"] == f"{p3.ip}:7003"
    assert ends["local"].startswith(p1.ip + ":")
