"""The DNS responder for <import>.<namespace>.svc.clusterset.local: answers, negative answers,
malformed and hostile datagrams (never an exception, never an answer to a response)."""

from __future__ import annotations

import asyncio
import socket
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.server.dns import Responder, serve_dns

IMPORTS = {("default", "reviews"): "10.96.0.7", ("shop", "cart"): "", ("v6", "web"): "fd00::7"}


def lookup(namespace, name):
    return IMPORTS.get((namespace, name))


def query(name: str, qtype: int = 1, qclass: int = 1, *, ident: int = 0x1234, flags: int = 0x0100) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.strip(".").split(".")) + b"\0"
    return struct.pack("!HHHHHH", ident, flags, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, qclass)


def parse(reply: bytes):
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", reply)
    answers = []
    if an:  # one record, last: name pointer 0xC00C, type, class, ttl, rdlength, rdata (4 or 16 bytes)
        for size, family, rtype in ((4, socket.AF_INET, 1), (16, socket.AF_INET6, 28)):
            start = len(reply) - 12 - size
            if start >= 12 and struct.unpack_from("!HHHIH", reply, start)[::4] == (0xC00C, size) and \
                    struct.unpack_from("!H", reply, start + 2)[0] == rtype:
                ttl = struct.unpack_from("!I", reply, start + 6)[0]
                answers.append((socket.inet_ntop(family, reply[-size:]), ttl))
                break
        else:
            raise AssertionError(f"no A or AAAA record at the end of {reply!r}")
    return {"id": ident, "qr": bool(flags & 0x8000), "aa": bool(flags & 0x0400), "rd": bool(flags & 0x0100),
            "rcode": flags & 0xF, "qd": qd, "answers": answers}


def test_an_import_resolves_to_its_vip():
    results = []
    r = parse(Responder(lookup, on_answer=results.append).answer(query("reviews.default.svc.clusterset.local")))
    assert r == {"id": 0x1234, "qr": True, "aa": True, "rd": True, "rcode": 0, "qd": 1,
                 "answers": [("10.96.0.7", 5)]}
    assert results == ["answer"]


def test_names_are_case_insensitive_and_any_is_answered():
    r = parse(Responder(lookup).answer(query("Reviews.DEFAULT.svc.ClusterSet.Local.", qtype=255)))
    assert r["answers"] == [("10.96.0.7", 5)]


def test_negative_answers():
    responder = Responder(lookup)
    assert parse(responder.answer(query("nothing.default.svc.clusterset.local")))["rcode"] == 3
    assert parse(responder.answer(query("reviews.default.clusterset.local")))["rcode"] == 3  # not under svc
    assert parse(responder.answer(query("clusterset.local")))["rcode"] == 3
    nodata = parse(responder.answer(query("reviews.default.svc.clusterset.local", qtype=28)))  # AAAA
    assert nodata["rcode"] == 0 and nodata["answers"] == [] and nodata["aa"]
    no_vip_yet = parse(responder.answer(query("cart.shop.svc.clusterset.local")))
    assert no_vip_yet["rcode"] == 0 and no_vip_yet["answers"] == []
    assert parse(responder.answer(query("web.v6.svc.clusterset.local")))["answers"] == []  # no A for IPv6
    outside = parse(responder.answer(query("example.com")))
    assert outside["rcode"] == 5 and not outside["aa"]
    assert parse(responder.answer(query("reviews.default.svc.clusterset.local", qclass=3)))["rcode"] == 5  # CHAOS


def test_an_ipv6_vip_is_an_aaaa_record():
    responder = Responder(lookup)
    assert parse(responder.answer(query("web.v6.svc.clusterset.local", qtype=28)))["answers"] == [("fd00::7", 5)]
    assert parse(responder.answer(query("web.v6.svc.clusterset.local", qtype=255)))["answers"] == [("fd00::7", 5)]
    nodata = parse(responder.answer(query("web.v6.svc.clusterset.local")))  # A for an IPv6-only Import
    assert nodata["rcode"] == 0 and nodata["answers"] == []


def test_another_zone():
    responder = Responder(lookup, zone="mesh.example.")
    assert parse(responder.answer(query("reviews.default.svc.mesh.example")))["answers"] == [("10.96.0.7", 5)]
    assert parse(responder.answer(query("reviews.default.svc.clusterset.local")))["rcode"] == 5


def test_malformed_queries():
    results = []
    responder = Responder(lookup, on_answer=results.append)
    assert responder.answer(b"\x12") is None  # no header: nothing to answer
    assert responder.answer(query("reviews.default.svc.clusterset.local", flags=0x8000)) is None  # a response
    notimp = parse(responder.answer(query("reviews.default.svc.clusterset.local", flags=0x2000)))  # UPDATE
    assert notimp["rcode"] == 4 and notimp["qd"] == 0
    two = bytearray(query("a.b.svc.clusterset.local"))
    two[5] = 2
    assert parse(responder.answer(bytes(two)))["rcode"] == 1
    truncated = query("reviews.default.svc.clusterset.local")[:-3]
    assert parse(responder.answer(truncated))["rcode"] == 1
    pointer = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
    assert parse(responder.answer(pointer))["rcode"] == 1
    long_name = ".".join(["a" * 63] * 5)
    assert parse(responder.answer(query(long_name)))["rcode"] == 1
    assert results == ["formerr", "ignored", "notimp", "formerr", "formerr", "formerr", "formerr"]


def test_a_failing_store_is_servfail():
    def broken(namespace, name):
        raise RuntimeError("database is locked")

    r = parse(Responder(broken).answer(query("reviews.default.svc.clusterset.local")))
    assert r["rcode"] == 2 and not r["aa"]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_any_datagram_is_answered_or_dropped_never_raised(data):
    reply = Responder(lookup).answer(data)
    if reply is not None:
        assert reply[:2] == data[:2] and reply[2] & 0x80  # same id, a response


@settings(max_examples=300, deadline=None)
@given(st.lists(st.from_regex(r"[a-zA-Z0-9-]{1,20}", fullmatch=True), min_size=1, max_size=6),
       st.integers(0, 65535), st.integers(0, 65535))
def test_any_well_formed_question_is_echoed(labels, qtype, qclass):
    packet = query(".".join(labels), qtype, qclass)
    reply = Responder(lookup).answer(packet)
    r = parse(reply)
    assert r["qd"] == 1 and reply[12:len(packet)] == packet[12:]


def test_the_listener_survives_garbage_on_a_real_socket():
    async def go():
        transport = await serve_dns(Responder(lookup), "127.0.0.1", 0)
        port = transport.get_extra_info("sockname")[1]
        loop = asyncio.get_running_loop()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        try:
            await loop.sock_connect(client, ("127.0.0.1", port))
            for junk in (b"", b"\xff" * 3, b"\x00" * 600, query("x.y.svc.clusterset.local")[:-1]):
                await loop.sock_sendall(client, junk)
            await loop.sock_sendall(client, query("reviews.default.svc.clusterset.local", ident=77))
            while True:  # the FORMERR replies come first; the last one is ours
                reply = parse(await asyncio.wait_for(loop.sock_recv(client, 512), 5))
                if reply["id"] == 77:
                    return reply
        finally:
            client.close()
            transport.close()

    assert asyncio.run(go())["answers"] == [("10.96.0.7", 5)]
