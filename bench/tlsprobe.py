"""Which TLS version and cipher suite a peer listener negotiates with a Python (OpenSSL) client that
presents a peer certificate: `python -m bench.tlsprobe --host H --port P --cert C --key K --ca A
--server-name N`, run in a gateway's netns. Prints JSON {"version", "cipher", "bits"}; exit 1 (with
the error on stderr) when the handshake fails. It shows that the gateway pair and the HAProxy pair
encrypt with the same suite."""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys


def probe(host: str, port: int, cert: str, key: str, ca: str, server_name: str, timeout: float) -> dict[str, object]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            name, version, bits = tls.cipher()  # type: ignore[misc]
            return {"version": version, "cipher": name, "bits": bits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tlsprobe", description=__doc__.splitlines()[0])
    for flag in ("--host", "--cert", "--key", "--ca", "--server-name"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        result = probe(args.host, args.port, args.cert, args.key, args.ca, args.server_name, args.timeout)
    except (OSError, ssl.SSLError) as exc:
        print(f"tlsprobe {args.host}:{args.port}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
