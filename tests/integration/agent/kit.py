"""Owned test resources for the agent's integration tests: cgroups, subprocesses, a client network
namespace joined to this one by a veth, bpftool views, and small asyncio upstream servers.

Everything is registered when created and removed by `cleanup()` (called from fixture
finalizers), also after a failing test. Names start with "cl" + a random 4-hex id.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ipaddress
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.datapath import Datapath, cleanup_cgroup
from agent.netlink import Plumbing, netns_path
from agent.proxy import NodeProxy, Upstream

CGROUP2 = "/sys/fs/cgroup/unified"
VIP_GUARD = "10.96.0.0/12"
HERE = Path(__file__).resolve().parent
CLIENT_PROG = str(HERE / "client_prog.py")
SINK_PROG = str(HERE / "sink_prog.py")


def new_id() -> str:
    return "cl" + secrets.token_hex(2)


def skip_reason_privileged() -> str | None:
    """Why the BPF/netns tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "needs root (BPF programs, network namespaces, cgroups)"
    if not os.path.exists(os.path.join(CGROUP2, "cgroup.controllers")):
        return f"no cgroup v2 hierarchy at {CGROUP2}"
    # find_spec locates bcc without importing it: the test process, like the agent, never maps libbcc.
    if importlib.util.find_spec("bcc") is None:
        return "BCC (python3-bpfcc) is not importable: run make install"
    for tool in ("bpftool", "nsenter"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"{tool} is not installed"
    return None


# -- cgroups -------------------------------------------------------------------------------------

class Cgroups:
    """cgroup directories under the cgroup2 mount; cleanup moves processes out, detaches our BPF
    programs and removes them, deepest first."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def make(self, rel: str) -> str:
        path = os.path.join(CGROUP2, rel)
        os.mkdir(path)
        self.created.append(path)
        return path

    def cleanup(self) -> None:
        errors = []
        for path in sorted(self.created, key=lambda p: p.count("/"), reverse=True):
            if not os.path.isdir(path):
                continue
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    pids = f.read().split()
                for pid in pids:
                    with open(os.path.join(CGROUP2, "cgroup.procs"), "w") as f:
                        f.write(pid)
                cleanup_cgroup(path)
                for _ in range(50):
                    try:
                        os.rmdir(path)
                        break
                    except OSError as exc:
                        if exc.errno != 16:  # EBUSY: a process is still leaving
                            raise
                        time.sleep(0.05)
                else:
                    os.rmdir(path)
            except Exception as exc:  # collect, so every cgroup gets its chance
                errors.append(f"{path}: {exc!r}")
        self.created.clear()
        if errors:
            raise RuntimeError("cgroup cleanup failed: " + "; ".join(errors))


# -- processes -----------------------------------------------------------------------------------

def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]  # field 22: starttime
    except FileNotFoundError:
        return None


class Processes:
    """Subprocesses started by a test, killed by PID at cleanup if still running (the start time
    is checked, so a recycled PID is never killed)."""

    def __init__(self) -> None:
        self.pids: list[tuple[int, str | None]] = []

    def register(self, pid: int) -> None:
        self.pids.append((pid, _start_time(pid)))

    def cleanup(self) -> None:
        for pid, started in self.pids:
            if started is None or _start_time(pid) != started:
                continue  # gone already
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            for _ in range(100):  # reaped by asyncio's child watcher otherwise
                if _start_time(pid) != started:
                    break
                time.sleep(0.01)
        self.pids.clear()


# -- bpftool -------------------------------------------------------------------------------------

def bpftool_json(*args: str) -> list | dict:
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []


def cgroup_attachments(path: str) -> list[dict]:
    """`bpftool -j cgroup show <path>`: the programs attached directly to the cgroup."""
    return bpftool_json("cgroup", "show", path)


def map_entries(map_id: int) -> list:
    return bpftool_json("map", "dump", "id", str(map_id))


# -- network: a client netns joined to this one by a veth ----------------------------------------

def _used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [ipaddress.IPv4Interface(line.split()[3]).network for line in out.splitlines()]


class ClientNet:
    """netns <id>c with veth <id>p (198.18.X.Y+2/30), joined to <id>h (198.18.X.Y+1/30) in this
    namespace. The VIP range is unreachable inside the netns, so a missed redirect fails there."""

    def __init__(self, name_id: str) -> None:
        self.netns = f"{name_id}c"
        self.host_if = f"{name_id}h"
        self.peer_if = f"{name_id}p"
        used = _used_ipv4_networks()
        while True:
            base = ipaddress.IPv4Address("198.18.0.0") + 4 * random.randrange(0, 32768)
            net = ipaddress.IPv4Network(f"{base}/30")
            if not any(net.overlaps(u) for u in used):
                break
        self.host_ip = str(base + 1)
        self.client_ip = str(base + 2)
        self.plumbing = Plumbing()

    def build(self) -> None:
        p = self.plumbing
        p.add_netns(self.netns)
        p.add_route(VIP_GUARD, unreachable=True, netns=self.netns)
        p.add_veth(self.host_if, self.peer_if, peer_netns=self.netns)
        p.add_address(self.host_if, f"{self.host_ip}/30")
        p.add_address(self.peer_if, f"{self.client_ip}/30", netns=self.netns)
        p.set_up(self.host_if)
        p.set_up(self.peer_if, netns=self.netns)

    def cleanup(self) -> None:
        self.plumbing.cleanup()


async def run_client(processes: Processes, *, mode: str, to: tuple[str, int], netns: str | None = None,
                     cgroup: str | None = None, send: str = "", nbytes: int = 0,
                     timeout: float = 30.0) -> dict:
    """Run client_prog.py (in netns through nsenter, which keeps /sys/fs/cgroup visible) and
    return its JSON report."""
    proc = await start_client(processes, mode=mode, to=to, netns=netns, cgroup=cgroup, send=send,
                              nbytes=nbytes)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"client {mode} to {to} did not finish within {timeout} s") from None
    assert proc.returncode == 0, f"client failed ({proc.returncode}): {stderr.decode()}"
    return json.loads(stdout.decode().splitlines()[-1])


async def start_client(processes: Processes, *, mode: str, to: tuple[str, int], netns: str | None = None,
                       cgroup: str | None = None, send: str = "", nbytes: int = 0,
                       stdin: int | None = None) -> asyncio.subprocess.Process:
    argv = [sys.executable, CLIENT_PROG, "--mode", mode, "--to", f"{to[0]}:{to[1]}", "--send", send,
            "--bytes", str(nbytes)]
    if cgroup:
        argv += ["--cgroup", cgroup]
    if netns:
        argv = ["nsenter", f"--net={netns_path(netns)}", "--", *argv]
    proc = await asyncio.create_subprocess_exec(*argv, stdin=stdin, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    processes.register(proc.pid)
    return proc


# -- upstream servers ----------------------------------------------------------------------------

Handler = Callable[[socket.socket], Awaitable[None]]


@contextlib.asynccontextmanager
async def tcp_server(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[tuple[str, int]]:
    """A raw-socket asyncio server (one task per connection, all awaited on exit)."""
    loop = asyncio.get_running_loop()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, 0))
    ls.listen(128)
    ls.setblocking(False)
    tasks: set[asyncio.Task] = set()

    async def serve_one(conn: socket.socket) -> None:
        try:
            await handler(conn)
        except ConnectionError:
            pass  # clients that reset are part of several tests; they assert on the client side
        finally:
            conn.close()

    async def accept_loop() -> None:
        while True:
            conn, _ = await loop.sock_accept(ls)
            conn.setblocking(False)
            task = asyncio.create_task(serve_one(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    acceptor = asyncio.create_task(accept_loop())
    try:
        yield ls.getsockname()
    finally:
        acceptor.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(acceptor, *tasks, return_exceptions=True)
        ls.close()


async def read_line(conn: socket.socket) -> tuple[bytes, bytes]:
    """Read up to the first newline; returns (line, bytes after it)."""
    loop = asyncio.get_running_loop()
    buf = b""
    while b"\n" not in buf:
        data = await loop.sock_recv(conn, 65536)
        if not data:
            raise ConnectionError(f"EOF before a full line: {buf!r}")
        buf += data
    line, rest = buf.split(b"\n", 1)
    return line, rest


async def read_to_eof(conn: socket.socket, initial: bytes = b"") -> bytes:
    loop = asyncio.get_running_loop()
    chunks = [initial]
    while True:
        data = await loop.sock_recv(conn, 65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the redirect path in miniature ---------------------------------------------------------------

def random_vip() -> str:
    return f"10.{random.randrange(96, 112)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def redirect_resolver(datapath: Datapath, upstream: tuple[str, int], seen: list):
    """The agent's resolve in miniature: look the connection up, send it upstream with a preamble
    naming the original destination and the client's cgroup."""

    async def resolve(client: tuple[str, int]) -> Upstream | None:
        redirect = datapath.lookup(*client)
        seen.append((client, redirect))
        if redirect is None:
            return None
        preamble = {"dst": f"{redirect.orig_ip}:{redirect.orig_port}", "cgroup_id": redirect.cgroup_id,
                    "cgroup": datapath.cgroup_path_for_id(redirect.cgroup_id)}
        return Upstream(upstream, json.dumps(preamble).encode() + b"\n")

    return resolve


async def echo_upstream(conn) -> None:
    """Answers "<preamble JSON>|<everything the client sent>" after the client's EOF."""
    line, rest = await read_line(conn)
    data = await read_to_eof(conn, rest)
    await asyncio.get_running_loop().sock_sendall(conn, line + b"|" + data)


@contextlib.asynccontextmanager
async def proxy_for(env: Any, vips: list[tuple[str, int]], seen: list,
                    upstream: tuple[str, int]) -> AsyncIterator[NodeProxy]:
    proxy = NodeProxy((env.net.host_ip, 0), resolve=redirect_resolver(env.datapath, upstream, seen))
    await proxy.start()
    try:
        env.datapath.reconcile({vip: proxy.address for vip in vips})
        yield proxy
    finally:
        await proxy.stop()
        env.datapath.reconcile({})
