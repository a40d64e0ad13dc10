"""A small authoritative DNS responder for `<import>.<namespace>.svc.clusterset.local` (`--dns-listen`).

It answers the Multi-Cluster Services API's names with the VIP of the Import of that name and
namespace, in standalone mode and in Kubernetes alike; a cluster's CoreDNS forwards the zone to it
(`forward clusterset.local <control plane service>:53`), where the CoreDNS multicluster plugin is
not available. UDP only: an answer is one A or AAAA record, far below 512 bytes, so truncation
never happens.

Answers (RFC 1035, RFC 3596): A (or ANY) for an Import with an IPv4 VIP → the VIP, TTL `ttl`;
AAAA (or ANY) for one with an IPv6 VIP; another type for an existing name → no data (NOERROR,
empty answer); a name in the zone that is no Import → NXDOMAIN;
a name outside the zone → REFUSED (not authoritative). A query that cannot be parsed gets FORMERR
when its header can be read and nothing otherwise; responses, other opcodes (NOTIMP) and other
classes (REFUSED) are handled too, and no datagram can stop the listener.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_ZONE = "clusterset.local"
DEFAULT_TTL = 5

TYPE_A = 1
TYPE_AAAA = 28
TYPE_ANY = 255
CLASS_IN = 1
CLASS_ANY = 255
RCODE_NOERROR, RCODE_FORMERR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP, RCODE_REFUSED = 0, 1, 2, 3, 4, 5
RCODE_NAMES = {0: "noerror", 1: "formerr", 2: "servfail", 3: "nxdomain", 4: "notimp", 5: "refused"}

_HEADER = struct.Struct("!HHHHHH")
MAX_NAME = 255

Lookup = Callable[[str, str], "str | None"]  # (namespace, name) of an Import -> its VIP, or None


class FormatError(ValueError):
    pass


def parse_question(packet: bytes) -> tuple[str, int, int, int]:
    """(lower-case name without the trailing dot, qtype, qclass, offset after the question)."""
    labels, offset, length = [], _HEADER.size, 0
    while True:
        if offset >= len(packet):
            raise FormatError("the name runs past the packet")
        size = packet[offset]
        offset += 1
        if size == 0:
            break
        if size & 0xC0:
            raise FormatError("a compressed name in the question")
        length += size + 1
        if length > MAX_NAME:
            raise FormatError("the name is longer than 255 bytes")
        label = packet[offset:offset + size]
        if len(label) != size:
            raise FormatError("a label runs past the packet")
        labels.append(label.decode("ascii", "replace").lower())
        offset += size
    if offset + 4 > len(packet):
        raise FormatError("the question has no type and class")
    qtype, qclass = struct.unpack_from("!HH", packet, offset)
    return ".".join(labels), qtype, qclass, offset + 4


class Responder:
    def __init__(self, lookup: Lookup, *, zone: str = DEFAULT_ZONE, ttl: int = DEFAULT_TTL,
                 on_answer: Callable[[str], None] | None = None) -> None:
        self._lookup = lookup
        self.zone = zone.strip(".").lower()
        self.ttl = ttl
        self._on_answer = on_answer

    def _reply(self, packet: bytes, rcode: int, question_end: int, answer: bytes = b"",
               authoritative: bool = True) -> bytes:
        ident, flags = struct.unpack_from("!HH", packet, 0)
        out_flags = 0x8000 | (flags & 0x7800) | (0x0400 if authoritative else 0) | (flags & 0x0100) | rcode
        qdcount = 1 if question_end else 0
        header = _HEADER.pack(ident, out_flags, qdcount, 1 if answer else 0, 0, 0)
        return header + (packet[_HEADER.size:question_end] if question_end else b"") + answer

    def answer(self, packet: bytes) -> bytes | None:
        """The response to one datagram, or None when nothing should be sent back."""
        if len(packet) < _HEADER.size:
            self._count("formerr")
            return None
        _, flags, qdcount, _, _, _ = _HEADER.unpack_from(packet, 0)
        if flags & 0x8000:  # a response: never answer one (no loops between two responders)
            self._count("ignored")
            return None
        if (flags >> 11) & 0xF != 0:
            return self._done(self._reply(packet, RCODE_NOTIMP, 0, authoritative=False), RCODE_NOTIMP)
        if qdcount != 1:
            return self._done(self._reply(packet, RCODE_FORMERR, 0, authoritative=False), RCODE_FORMERR)
        try:
            name, qtype, qclass, end = parse_question(packet)
        except FormatError as exc:
            log.debug("DNS query not understood: %s", exc)
            return self._done(self._reply(packet, RCODE_FORMERR, 0, authoritative=False), RCODE_FORMERR)
        if qclass not in (CLASS_IN, CLASS_ANY) or not (name == self.zone or name.endswith("." + self.zone)):
            return self._done(self._reply(packet, RCODE_REFUSED, end, authoritative=False), RCODE_REFUSED)
        parts = name[:-len(self.zone)].rstrip(".").split(".") if name != self.zone else []
        if len(parts) != 3 or parts[2] != "svc":
            return self._done(self._reply(packet, RCODE_NXDOMAIN, end), RCODE_NXDOMAIN)
        try:
            vip = self._lookup(parts[1], parts[0])
        except Exception:  # noqa: BLE001 - the store failed: say so, keep serving
            log.exception("DNS lookup of %s failed", name)
            return self._done(self._reply(packet, RCODE_SERVFAIL, end, authoritative=False), RCODE_SERVFAIL)
        if vip is None:
            return self._done(self._reply(packet, RCODE_NXDOMAIN, end), RCODE_NXDOMAIN)
        try:
            address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(vip)
        except ValueError:
            address = None  # no VIP yet ("")
        rtype = TYPE_A if isinstance(address, ipaddress.IPv4Address) else TYPE_AAAA
        if address is None or qtype not in (rtype, TYPE_ANY):
            return self._done(self._reply(packet, RCODE_NOERROR, end), RCODE_NOERROR, "nodata")
        record = struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, self.ttl, len(address.packed)) + address.packed
        return self._done(self._reply(packet, RCODE_NOERROR, end, record), RCODE_NOERROR, "answer")

    def _done(self, reply: bytes, rcode: int, result: str | None = None) -> bytes:
        self._count(result or RCODE_NAMES[rcode])
        return reply

    def _count(self, result: str) -> None:
        if self._on_answer is not None:
            self._on_answer(result)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder) -> None:
        self._responder = responder
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            reply = self._responder.answer(data)
        except Exception:  # noqa: BLE001 - one datagram never stops the listener
            log.exception("DNS query from %s failed", addr)
            return
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS socket error: %s", exc)


async def serve_dns(responder: Responder, host: str, port: int) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(responder), local_addr=(host, port))
    log.info("DNS responder for *.svc.%s on %s:%d (udp)", responder.zone, host, port)
    return transport  # type: ignore[return-value]
