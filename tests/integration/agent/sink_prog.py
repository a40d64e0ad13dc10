"""A test upstream, run as a subprocess: accepts one connection, reads the preamble line, hashes
everything after it until EOF, answers "<bytes> <sha256>" and closes. Prints its port first."""

import hashlib
import socket
import sys

ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
print(ls.getsockname()[1], flush=True)
conn, _ = ls.accept()
buf = b""
while b"\n" not in buf:
    data = conn.recv(65536)
    if not data:
        sys.exit("EOF before the preamble")
    buf += data
preamble, rest = buf.split(b"\n", 1)
digest = hashlib.sha256(rest)
total = len(rest)
view = bytearray(1 << 20)
while True:
    n = conn.recv_into(view)
    if not n:
        break
    digest.update(memoryview(view)[:n])
    total += n
conn.sendall(f"{total} {digest.hexdigest()} {preamble.decode()}".encode())
conn.close()
