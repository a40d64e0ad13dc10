"""A test client, run as a subprocess (optionally inside a cgroup and a network namespace).

It joins --cgroup FIRST (before any socket exists: a socket's cgroup is fixed at socket()), then
does one --mode and prints one JSON line with what it saw. Standard library only.
"""

import argparse
import errno
import hashlib
import json
import os
import socket
import struct
import sys
import time


def addr(text):
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def errname(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))


def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def recv_all(sock):
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cgroup")
    p.add_argument("--mode", required=True)
    p.add_argument("--to", required=True, type=addr)
    p.add_argument("--send", default="")
    p.add_argument("--bytes", type=int, default=0)
    args = p.parse_args()
    if args.cgroup:
        with open(os.path.join(args.cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))

    if args.mode == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect(args.to)
        except OSError as exc:
            return out(connect_error=errname(exc))
        return out(peer=list(s.getpeername()))

    if args.mode in ("udp-connected", "udp-sendto"):
        # One datagram to --to and one answer: what the application sees of where it came from.
        s = socket.socket(socket.AF_INET6 if ":" in args.to[0] else socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(10)
        try:
            if args.mode == "udp-connected":
                s.connect(args.to)
                s.send(args.send.encode())
                peer = list(s.getpeername())[:2]
            else:
                s.sendto(args.send.encode(), args.to)
                peer = None
            data, source = s.recvfrom(65536)
        except OSError as exc:
            return out(error=errname(exc))
        return out(peer=peer, local=list(s.getsockname())[:2], source=list(source)[:2],
                   reply=data.decode(errors="replace"))

    s = socket.socket(socket.AF_INET6 if ":" in args.to[0] else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.connect(args.to)
    except OSError as exc:
        return out(connect_error=errname(exc))
    peer, local = list(s.getpeername())[:2], list(s.getsockname())[:2]

    if args.mode == "echo":
        s.sendall(args.send.encode())
        s.shutdown(socket.SHUT_WR)
        try:
            reply = recv_all(s)
        except OSError as exc:
            return out(peer=peer, local=local, error=errname(exc))
        return out(peer=peer, local=local, reply=reply.decode(errors="replace"))

    if args.mode == "hold":
        out(peer=peer, local=local, state="connected")
        sys.stdin.read()  # until the test closes our stdin
        s.close()
        return out(state="closed")

    if args.mode == "bulk":
        block = bytearray(os.urandom(1 << 20))
        digest = hashlib.sha256()
        start = time.monotonic()
        sent = 0
        i = 0
        while sent < args.bytes:
            struct.pack_into("!Q", block, 0, i)  # every MiB differs: reordering would show
            chunk = memoryview(block)[: min(len(block), args.bytes - sent)]
            s.sendall(chunk)
            digest.update(chunk)
            sent += len(chunk)
            i += 1
        s.shutdown(socket.SHUT_WR)
        reply = recv_all(s)
        return out(peer=peer, sha256=digest.hexdigest(), sent=sent, reply=reply.decode(),
                   seconds=time.monotonic() - start)

    if args.mode == "wait_reset":
        s.sendall(args.send.encode())
        received = b""
        start = time.monotonic()
        s.settimeout(10)
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    return out(eof=True, received=received.decode(), seconds=time.monotonic() - start)
                received += data
        except OSError as exc:
            return out(error=errname(exc), received=received.decode(), seconds=time.monotonic() - start)

    if args.mode == "rst":
        s.sendall(args.send.encode())
        time.sleep(0.2)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        return out(state="reset")

    raise SystemExit(f"unknown mode {args.mode}")


if __name__ == "__main__":
    main()
