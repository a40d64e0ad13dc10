"""A scripted HTTP server standing in for the Kubernetes API server, to test `kubeapi` on real sockets.

Routes map (method, path) to a queue of replies: `(status, body)` for ordinary calls, or a list of
watch lines (sent with chunked encoding, then the stream ends) when the request has `watch=true`.
A watch reply of `HOLD` keeps the stream open until the test closes it. Every request is recorded.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

HOLD = object()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


class FakeAPIServer:
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], deque] = defaultdict(deque)
        self.requests: list[Request] = []
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                query = dict(parse_qsl(url.query))
                fake.requests.append(Request(self.command, url.path, query, dict(self.headers), body))
                replies = fake.routes.get((self.command, url.path))
                if not replies:
                    self._send(404, {"kind": "Status", "reason": "NotFound", "message": f"no route {url.path}",
                                     "code": 404})
                    return
                reply = replies.popleft() if len(replies) > 1 else replies[0]
                if isinstance(reply, list) or reply is HOLD:
                    self._stream([] if reply is HOLD else reply, hold=reply is HOLD)
                else:
                    status, doc = reply
                    self._send(status, doc)

            def _send(self, status: int, doc: Any) -> None:
                data = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, lines: list, hold: bool) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for line in lines:
                    data = (line if isinstance(line, str) else json.dumps(line)).encode() + b"\n"
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                if hold:
                    fake.release.wait(10)
                    self.close_connection = True
                    return
                self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       name="fake-apiserver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def route(self, method: str, path: str, *replies: Any) -> None:
        self.routes[(method, path)].extend(replies)

    def start(self) -> FakeAPIServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
