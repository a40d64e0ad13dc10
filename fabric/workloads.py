"""Small real programs for pods, run as `python -m fabric.workloads <name> ...` (stdlib only).

Servers (print `<name> listening on HOST:PORT` once they accept, exit 0 on SIGTERM):
  http-echo --name X --port P   HTTP/1.1; every request answered 200 with a JSON body naming X and
                                echoing method, path, client address and request body size
  tcp-echo --port P             echoes bytes; after the client's FIN it finishes echoing, then sends FIN
  sink --port P                 reads to EOF, then answers and logs `<bytes> <sha256>`
  dns-server --port P --answer IP
                                UDP DNS: every A (or ANY) query for any name answered with one A
                                record, IP (TTL 5); other types: NOERROR without answers
  udp-echo --port P             UDP: every datagram sent back to its sender

Clients (their exit status says how the connection ended; see EXIT_*):
  http-get URL [--timeout S]    prints the response body
  tcp-send --host H --port P --bytes N [--seed S]
                                sends N pseudo-random bytes, half-closes, reads the reply to EOF,
                                prints JSON {sent, sha256, received, received_sha256, reply}
  getpeername --host H --port P prints JSON {peer, local} of a connected socket
  dns-query --host H --port P --name N [--count C]
                                C A queries for N from one unconnected UDP socket, as a stub
                                resolver does: an answer counts only if it comes from H:P and
                                carries the query's id; prints JSON {answers, sources, rcodes}
  udp-send --host H --port P --size B [--count C] [--connect]
                                C datagrams of B bytes, each answered before the next (an echo);
                                prints JSON {sent, received, sources, peer}
  http-probe URL --commands FIFO
                                for every line read from FIFO, one GET on a new connection at once,
                                printing JSON {line, code, server} (code: an EXIT_* value), so that
                                a test can time a connection to the millisecond without starting a
                                process; ends at the FIFO's end of file
  http-load URL --duration S [--count N] [--interval S] [--concurrency C] [--timeout S]
                                C clients, each opening one GET on a new connection after another
                                (a pause of --interval between them), for S seconds, at most N
                                connections in all, printing JSON {start, end,
                                code, server} per connection (start/end: CLOCK_MONOTONIC seconds,
                                which the whole machine shares), for failover measurements
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import http.client
import json
import random
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

EXIT_OK = 0
EXIT_ERROR = 1  # any other failure (2 is argparse's usage error)
EXIT_REFUSED = 3
EXIT_RESET = 4
EXIT_TIMEOUT = 5
EXIT_UNREACHABLE = 6  # no route (EHOSTUNREACH / ENETUNREACH), e.g. the VIP range
EXIT_CLOSED = 7  # the server closed the connection without a (complete) answer
EXIT_HTTP_STATUS = 8  # an HTTP answer that is not 2xx (body still printed)

MAX_HTTP_BODY = 16 * 1024 * 1024
CHUNK = 256 * 1024
REPLY_PREVIEW = 4096


def exit_code_for(exc: BaseException) -> int:
    """How a connection failure ends a client: one exit status per kind of failure."""
    if isinstance(exc, (http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return EXIT_CLOSED
    if isinstance(exc, ConnectionRefusedError):
        return EXIT_REFUSED
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return EXIT_RESET
    if isinstance(exc, TimeoutError):
        return EXIT_TIMEOUT
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return EXIT_UNREACHABLE
    return EXIT_ERROR


def _client(name: str, action: Callable[[], int]) -> int:
    try:
        return action()
    except (OSError, http.client.HTTPException) as exc:
        code = exit_code_for(exc)
        print(f"{name}: {type(exc).__name__}: {exc} (exit {code})", file=sys.stderr)
        return code


def _address(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _serve_until_sigterm(server: socketserver.BaseServer, banner: str) -> int:
    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    print(banner, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except (SystemExit, KeyboardInterrupt):
        pass  # a requested stop: close below and exit 0
    finally:
        server.server_close()
    return EXIT_OK


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


# --- http-echo -----------------------------------------------------------------------------------
class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fabric-http-echo/1"
    server_name_label = "?"  # set per server in a subclass

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass  # trailers: read and ignored
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
                if len(body) > MAX_HTTP_BODY:
                    return None
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_HTTP_BODY:
            return None
        return self.rfile.read(length)

    def _answer(self) -> None:
        body = self._read_body()
        if body is None:
            self.send_error(413, "request body too large")
            return
        payload = {
            "server": self.server_name_label,
            "method": self.command,
            "path": self.path,
            "client": _address(self.client_address),
            "host": self.headers.get("Host", ""),
            "body_bytes": len(body),
        }
        data = (json.dumps(payload) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """No access log: one line per request would drown the log (errors are still logged)."""


def http_echo(args: argparse.Namespace) -> int:
    handler = type("EchoHandler", (_EchoHandler,), {"server_name_label": args.name})
    server = _HTTPServer((args.host, args.port), handler)
    return _serve_until_sigterm(server, f"http-echo {args.name} listening on {_address(server.server_address)}")


# --- tcp-echo and sink ---------------------------------------------------------------------------
class _EchoStream(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            while data := sock.recv(CHUNK):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # the client half-closed and everything was echoed: close our side
        except (ConnectionResetError, BrokenPipeError) as exc:
            print(f"tcp-echo: connection from {_address(self.client_address)} ended: {exc}", file=sys.stderr, flush=True)


class _Sink(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        digest, count = hashlib.sha256(), 0
        buf = bytearray(CHUNK)
        try:
            while n := sock.recv_into(buf):
                digest.update(memoryview(buf)[:n])
                count += n
            report = f"{count} {digest.hexdigest()}"
            print(f"sink: {_address(self.client_address)} sent {report}", flush=True)
            sock.sendall((report + "\n").encode())
            sock.shutdown(socket.SHUT_WR)
        except (ConnectionResetError, BrokenPipeError) as exc:
            print(f"sink: connection from {_address(self.client_address)} ended after {count} bytes: {exc}", file=sys.stderr, flush=True)


def tcp_echo(args: argparse.Namespace) -> int:
    server = _Server((args.host, args.port), _EchoStream)
    return _serve_until_sigterm(server, f"tcp-echo listening on {_address(server.server_address)}")


def sink(args: argparse.Namespace) -> int:
    server = _Server((args.host, args.port), _Sink)
    return _serve_until_sigterm(server, f"sink listening on {_address(server.server_address)}")


# --- UDP: dns-server and udp-echo ---------------------------------------------------------------
DNS_HEADER = struct.Struct("!HHHHHH")


def _dns_question_end(packet: bytes) -> int:
    """Offset after the one question of a query; ValueError when it cannot be read."""
    offset = DNS_HEADER.size
    while True:
        if offset >= len(packet):
            raise ValueError("truncated name")
        size = packet[offset]
        if size & 0xC0:
            raise ValueError("compressed name in a question")
        offset += 1 + size
        if size == 0:
            break
    if offset + 4 > len(packet):
        raise ValueError("no type and class")
    return offset + 4


def _dns_answer(packet: bytes, answer: bytes) -> bytes | None:
    if len(packet) < DNS_HEADER.size:
        return None
    ident, flags, qdcount, _, _, _ = DNS_HEADER.unpack_from(packet)
    if flags & 0x8000 or qdcount != 1:
        return None
    try:
        end = _dns_question_end(packet)
    except ValueError:
        return DNS_HEADER.pack(ident, 0x8000 | 1, 0, 0, 0, 0)  # FORMERR
    qtype = struct.unpack_from("!H", packet, end - 4)[0]
    records = b""
    if qtype in (1, 255):
        records = struct.pack("!HHHIH", 0xC00C, 1, 1, 5, 4) + answer
    return DNS_HEADER.pack(ident, 0x8400 | (flags & 0x0100), 1, 1 if records else 0, 0, 0) + packet[12:end] + records


def _serve_udp(args: argparse.Namespace, name: str, reply: Callable[[bytes], bytes | None]) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.host, args.port))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(EXIT_OK))
    print(f"{name} listening on {_address(sock.getsockname())}", flush=True)
    while True:
        data, client = sock.recvfrom(65535)
        out = reply(data)
        if out is not None:
            try:
                sock.sendto(out, client)
            except OSError as exc:
                print(f"{name}: answer to {_address(client)} failed: {exc}", file=sys.stderr, flush=True)


def dns_server(args: argparse.Namespace) -> int:
    answer = socket.inet_aton(args.answer)
    return _serve_udp(args, "dns-server", lambda packet: _dns_answer(packet, answer))


def udp_echo(args: argparse.Namespace) -> int:
    return _serve_udp(args, "udp-echo", lambda packet: packet)


def _family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _dns_query(ident: int, name: str) -> bytes:
    labels = b"".join(bytes((len(part),)) + part.encode("ascii") for part in name.strip(".").split("."))
    return DNS_HEADER.pack(ident, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", 1, 1)


def dns_query(args: argparse.Namespace) -> int:
    def query() -> int:
        server = (args.host, args.port)
        answers, sources, rcodes = [], [], []
        with socket.socket(_family_of(args.host), socket.SOCK_DGRAM) as sock:
            sock.settimeout(args.timeout)
            for i in range(args.count):
                ident = random.getrandbits(16)
                sock.sendto(_dns_query(ident, args.name), server)
                while True:  # what does not come from the server, or is not our answer, is ignored
                    data, source = sock.recvfrom(65535)
                    sources.append(_address(source))
                    if source[:2] == server and len(data) >= DNS_HEADER.size and \
                            DNS_HEADER.unpack_from(data)[0] == ident:
                        break
                flags, _, ancount = DNS_HEADER.unpack_from(data)[1:4]
                rcodes.append(flags & 0xF)
                answers.append(socket.inet_ntoa(data[-4:]) if ancount else None)
        print(json.dumps({"answers": answers, "sources": sources, "rcodes": rcodes}), flush=True)
        return EXIT_OK

    return _client("dns-query", query)


def udp_send(args: argparse.Namespace) -> int:
    def send() -> int:
        server = (args.host, args.port)
        sent = received = 0
        sources: set[str] = set()
        with socket.socket(_family_of(args.host), socket.SOCK_DGRAM) as sock:
            sock.settimeout(args.timeout)
            if args.connect:
                sock.connect(server)
            peer = _address(sock.getpeername()) if args.connect else None
            for i in range(args.count):
                payload = i.to_bytes(4, "big") + random.randbytes(max(args.size - 4, 0))
                sock.sendto(payload, server) if not args.connect else sock.send(payload)
                sent += 1
                data, source = sock.recvfrom(65535)
                sources.add(_address(source))
                if data != payload:
                    print(json.dumps({"error": f"datagram {i} came back changed ({len(data)} bytes)"}), flush=True)
                    return EXIT_ERROR
                received += 1
        print(json.dumps({"sent": sent, "received": received, "sources": sorted(sources), "peer": peer}), flush=True)
        return EXIT_OK

    return _client("udp-send", send)


# --- clients -------------------------------------------------------------------------------------
def _http_target(name: str, text: str) -> tuple[str, int, str] | None:
    """(host, port, path) of an http:// URL; None (after saying why) for anything else."""
    url = urllib.parse.urlsplit(text)
    if url.scheme != "http" or not url.hostname:
        print(f"{name}: only http://host[:port]/path URLs, not {text!r}", file=sys.stderr)
        return None
    return url.hostname, url.port or 80, (url.path or "/") + (f"?{url.query}" if url.query else "")


def http_get(args: argparse.Namespace) -> int:
    target = _http_target("http-get", args.url)
    if target is None:
        return EXIT_ERROR
    host, port, path = target

    def get() -> int:
        conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
        try:
            conn.request(args.method, path, body=args.data.encode() if args.data is not None else None)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        sys.stdout.buffer.write(body)
        sys.stdout.flush()
        print(f"http-get: HTTP {response.status} {response.reason}", file=sys.stderr)
        return EXIT_OK if 200 <= response.status < 300 else EXIT_HTTP_STATUS

    return _client("http-get", get)


def _get_once(host: str, port: int, path: str, timeout: float) -> tuple[int, str]:
    """(EXIT_* code, the echoing server's name or what went wrong) of one GET on a new connection."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        code = EXIT_OK if 200 <= response.status < 300 else EXIT_HTTP_STATUS
        try:
            server = json.loads(body)["server"]
        except (ValueError, KeyError, TypeError):
            server = body.decode(errors="replace")[:200]
    except (OSError, http.client.HTTPException) as exc:
        code, server = exit_code_for(exc), f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return code, server


def http_probe(args: argparse.Namespace) -> int:
    target = _http_target("http-probe", args.url)
    if target is None:
        return EXIT_ERROR
    print("http-probe ready", flush=True)
    with open(args.commands, encoding="utf-8") as commands:  # blocks until the test opens it for writing
        for line in commands:
            code, server = _get_once(*target, args.timeout)
            print(json.dumps({"line": line.strip(), "code": code, "server": server}), flush=True)
    return EXIT_OK


def http_load(args: argparse.Namespace) -> int:
    target = _http_target("http-load", args.url)
    if target is None:
        return EXIT_ERROR
    if args.duration <= 0 or args.count < 1 or args.interval < 0 or not 1 <= args.concurrency <= 64:
        print("http-load: --duration and --count must be positive, --interval not negative, --concurrency "
              "1..64", file=sys.stderr)
        return EXIT_ERROR
    deadline = time.monotonic() + args.duration
    budget = iter(range(args.count))  # shared by the clients: at most --count connections in all
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if next(budget, None) is None:
                    return
            start = time.monotonic()
            if start >= deadline:
                return
            code, server = _get_once(*target, args.timeout)
            line = json.dumps({"start": start, "end": time.monotonic(), "code": code, "server": server})
            with lock:
                print(line, flush=True)
            if args.interval:
                time.sleep(args.interval)

    threads = [threading.Thread(target=client, name=f"http-load-{i}") for i in range(args.concurrency)]
    print("http-load ready", flush=True)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return EXIT_OK


def tcp_send(args: argparse.Namespace) -> int:
    def send() -> int:
        rng = random.Random(args.seed)
        sent_digest, received_digest = hashlib.sha256(), hashlib.sha256()
        received = bytearray()
        counts = {"received": 0}
        failures: list[BaseException] = []
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock:

            def receive() -> None:
                try:
                    while data := sock.recv(CHUNK):
                        received_digest.update(data)
                        counts["received"] += len(data)
                        if len(received) < REPLY_PREVIEW:
                            received.extend(data[: REPLY_PREVIEW - len(received)])
                except OSError as exc:
                    failures.append(exc)

            reader = threading.Thread(target=receive, name="tcp-send-reader", daemon=True)
            reader.start()
            remaining = args.bytes
            while remaining > 0:
                chunk = rng.randbytes(min(CHUNK, remaining))
                sock.sendall(chunk)
                sent_digest.update(chunk)
                remaining -= len(chunk)
            sock.shutdown(socket.SHUT_WR)
            reader.join(args.timeout)
            if reader.is_alive():
                raise TimeoutError(f"no end of the reply within {args.timeout}s after sending")
        if failures:
            raise failures[0]
        reply = received.decode(errors="replace") if counts["received"] <= REPLY_PREVIEW else None
        print(
            json.dumps(
                {
                    "sent": args.bytes,
                    "sha256": sent_digest.hexdigest(),
                    "received": counts["received"],
                    "received_sha256": received_digest.hexdigest(),
                    "reply": reply,
                }
            ),
            flush=True,
        )
        return EXIT_OK

    return _client("tcp-send", send)


def getpeername(args: argparse.Namespace) -> int:
    def connect() -> int:
        with socket.create_connection((args.host, args.port), timeout=args.timeout) as sock:
            print(json.dumps({"peer": _address(sock.getpeername()), "local": _address(sock.getsockname())}), flush=True)
        return EXIT_OK

    return _client("getpeername", connect)


# --- command line --------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fabric.workloads", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="workload", required=True)

    def server(name: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--host", default="0.0.0.0")
        p.set_defaults(run=run)
        return p

    server("http-echo", http_echo).add_argument("--name", required=True)
    server("tcp-echo", tcp_echo)
    server("sink", sink)
    server("dns-server", dns_server).add_argument("--answer", required=True, help="the IPv4 address of every A answer")
    server("udp-echo", udp_echo)

    p = sub.add_parser("dns-query")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--name", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(run=dns_query)

    p = sub.add_parser("udp-send")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--connect", action="store_true", help="connect() the socket (else sendto each datagram)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(run=udp_send)

    p = sub.add_parser("http-get")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--method", default="GET")
    p.add_argument("--data", help="request body")
    p.set_defaults(run=http_get)

    p = sub.add_parser("http-probe")
    p.add_argument("url")
    p.add_argument("--commands", required=True, help="a FIFO: one GET per line read")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(run=http_probe)

    p = sub.add_parser("http-load")
    p.add_argument("url")
    p.add_argument("--duration", type=float, required=True, help="seconds to keep starting connections")
    p.add_argument("--count", type=int, default=100_000, help="at most this many connections")
    p.add_argument("--interval", type=float, default=0.01, help="pause after each connection, seconds")
    p.add_argument("--concurrency", type=int, default=1,
                   help="clients, each opening one connection after another (a hung one holds only its client)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(run=http_load)

    for name, run in (("tcp-send", tcp_send), ("getpeername", getpeername)):
        p = sub.add_parser(name)
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--timeout", type=float, default=10.0)
        p.set_defaults(run=run)
        if name == "tcp-send":
            p.add_argument("--bytes", type=int, required=True)
            p.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
