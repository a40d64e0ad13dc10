"""Codec for the request the node agent sends its gateway before the application's bytes.

Wire format (sans-IO, see docs/internals.md):

    b"CLP1" | u32 big-endian length N (1..MAX_BODY) | N bytes of UTF-8 JSON | application bytes

The JSON object names the Import, the original destination, the client's attributes, and the
agent's credential; `"proto": "udp"` (absent for TCP) makes the connection one UDP flow, its bytes
datagram capsules (`controlplane.peerwire.datagrams`). There is no reply: the gateway relays or
resets.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

MAGIC = b"CLP1"
HEADER = struct.Struct(">4sI")
MAX_BODY = 16 * 1024
VERSION = 1


class PreambleError(ValueError):
    """The bytes on the wire are not a valid preamble (the sender misbehaved)."""


@dataclass(frozen=True)
class Preamble:
    import_namespace: str
    import_name: str
    destination: str  # "vip:port" the client connected to
    client: Mapping[str, str] = field(default_factory=dict)
    credential: str = ""
    node: str = ""
    udp: bool = False  # the connection carries one UDP flow (datagram capsules), not a TCP stream


def encode_preamble(p: Preamble) -> bytes:
    """Serialise a preamble; raises ValueError when it would not fit MAX_BODY."""
    fields: dict[str, object] = {
        "v": VERSION,
        "import": {"namespace": p.import_namespace, "name": p.import_name},
        "dst": p.destination,
        "client": dict(p.client),
        "credential": p.credential,
        "node": p.node,
    }
    if p.udp:
        fields["proto"] = "udp"
    body = json.dumps(
        fields,
        separators=(",", ":"),
        sort_keys=True,
    ).encode()
    if len(body) > MAX_BODY:
        raise ValueError(f"preamble of {len(body)} bytes exceeds the {MAX_BODY}-byte limit")
    return HEADER.pack(MAGIC, len(body)) + body


def _string(obj: Mapping[str, object], key: str, where: str) -> str:
    value = obj.get(key, "")
    if not isinstance(value, str):
        raise PreambleError(f"preamble field {where}{key} must be a string")
    return value


def decode_body(body: bytes) -> Preamble:
    """Parse the JSON body of a preamble (header already stripped)."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PreambleError(f"preamble body is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PreambleError("preamble body must be a JSON object")
    if obj.get("v") != VERSION:
        raise PreambleError(f"unsupported preamble version {obj.get('v')!r} (want {VERSION})")
    imp = obj.get("import")
    if not isinstance(imp, dict):
        raise PreambleError("preamble field 'import' must be an object")
    namespace = _string(imp, "namespace", "import.")
    name = _string(imp, "name", "import.")
    if not namespace or not name:
        raise PreambleError("preamble must name the import (import.namespace and import.name)")
    client = obj.get("client", {})
    if not isinstance(client, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in client.items()):
        raise PreambleError("preamble field 'client' must map strings to strings")
    proto = obj.get("proto", "tcp")
    if proto not in ("tcp", "udp"):
        raise PreambleError(f"preamble field 'proto' must be \"tcp\" or \"udp\", not {proto!r}")
    return Preamble(
        udp=proto == "udp",
        import_namespace=namespace,
        import_name=name,
        destination=_string(obj, "dst", ""),
        client=client,
        credential=_string(obj, "credential", ""),
        node=_string(obj, "node", ""),
    )


class PreambleReader:
    """Incremental parser: feed bytes as they arrive until a Preamble comes out.

    After a preamble is returned, `rest` holds the application bytes that followed it.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._done = False
        self.rest = b""

    def feed(self, data: bytes) -> Preamble | None:
        if self._done:
            raise RuntimeError("PreambleReader.feed called after the preamble was complete")
        self._buf += data
        n = min(len(self._buf), len(MAGIC))
        if self._buf[:n] != MAGIC[:n]:
            raise PreambleError("connection does not start with a ClusterLink preamble")
        if len(self._buf) < HEADER.size:
            return None
        _, length = HEADER.unpack_from(self._buf)
        if length == 0 or length > MAX_BODY:
            raise PreambleError(f"preamble length {length} is outside 1..{MAX_BODY}")
        end = HEADER.size + length
        if len(self._buf) < end:
            return None
        preamble = decode_body(bytes(self._buf[HEADER.size:end]))
        self.rest = bytes(self._buf[end:])
        self._buf = bytearray()
        self._done = True
        return preamble
