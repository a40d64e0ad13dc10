"""Python mirrors of the structs in bpf/clusterlink.h, their encoding, and the start-up check.

The C header is the single source of truth. The mirrors here are what Python uses to read and
write the maps; `check_layouts` compares them with the layout the compiler actually produced (as
BCC reports it, plus the key/value sizes the kernel recorded for each map) and fails with both
layouts spelled out when they differ.

Byte order (see the header): `ip` holds the address's four bytes in network order, so as a
native-endian integer it is `int.from_bytes(inet_aton(ip), sys.byteorder)`; `port` holds the port
in network order (`socket.htons`).
"""

from __future__ import annotations

import ctypes
import socket
import sys
from dataclasses import dataclass


IPPROTO_TCP = 6
IPPROTO_UDP = 17


class Addr(ctypes.Structure):
    """struct cl_addr: an IPv4 endpoint of one protocol (VIP:port, proxy or relay ip:port, or a
    client's local ip:port)."""

    _fields_ = [("ip", ctypes.c_uint32), ("port", ctypes.c_uint16), ("proto", ctypes.c_uint8),
                ("pad", ctypes.c_uint8)]


class Orig(ctypes.Structure):
    """struct cl_orig: the original destination of a redirected connection and the caller's cgroup."""

    _fields_ = [
        ("ip", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("cgroup_id", ctypes.c_uint64),
    ]


class Addr6(ctypes.Structure):
    """struct cl_addr6: an IPv6 endpoint (VIP6:port, proxy address, a client's local address)."""

    _fields_ = [("ip", ctypes.c_uint32 * 4), ("port", ctypes.c_uint16), ("proto", ctypes.c_uint8),
                ("pad", ctypes.c_uint8)]


class Orig6(ctypes.Structure):
    """struct cl_orig6: the original IPv6 destination of a redirected connection and the caller's cgroup."""

    _fields_ = [
        ("ip", ctypes.c_uint32 * 4),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("pad2", ctypes.c_uint32),
        ("cgroup_id", ctypes.c_uint64),
    ]


CookieKey = ctypes.c_uint64

# map name -> (key mirror, value mirror); the names are the ones in bpf/clusterlink.h.
MAPS: dict[str, tuple[type[ctypes._CData], type[ctypes._CData]]] = {
    "cl_services": (Addr, Addr),
    "cl_udp_relays": (Addr, Addr),
    "cl_cookie_orig": (CookieKey, Orig),
    "cl_tuple_orig": (Addr, Orig),
    "cl_services6": (Addr6, Addr6),
    "cl_udp_relays6": (Addr6, Addr6),
    "cl_cookie_orig6": (CookieKey, Orig6),
    "cl_tuple_orig6": (Addr6, Orig6),
}


def encode_ip(ip: str) -> int:
    """IPv4 text -> the u32 whose memory holds the address in network byte order."""
    return int.from_bytes(socket.inet_aton(ip), sys.byteorder)


def decode_ip(raw: int) -> str:
    return socket.inet_ntoa(raw.to_bytes(4, sys.byteorder))


def make_addr(ip: str, port: int, proto: int = IPPROTO_TCP) -> Addr:
    return Addr(ip=encode_ip(ip), port=socket.htons(port), proto=proto, pad=0)


def addr_tuple(addr: Addr | Orig) -> tuple[str, int]:
    return decode_ip(addr.ip), socket.ntohs(addr.port)


def make_addr6(ip: str, port: int, proto: int = IPPROTO_TCP) -> Addr6:
    """An IPv6 endpoint; an IPv4 address is stored as ::ffff:a.b.c.d."""
    packed = socket.inet_pton(socket.AF_INET6, ip if ":" in ip else f"::ffff:{ip}")
    words = (ctypes.c_uint32 * 4).from_buffer_copy(packed)
    return Addr6(ip=words, port=socket.htons(port), proto=proto, pad=0)


def decode_ip6(words: ctypes.Array[ctypes.c_uint32]) -> str:
    """The text of an IPv6 address in a struct; ::ffff:a.b.c.d comes back as a.b.c.d."""
    packed = bytes(words)
    if packed[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntoa(packed[12:])
    return socket.inet_ntop(socket.AF_INET6, packed)


def addr6_triple(addr: Addr6 | Orig6) -> tuple[str, int, int]:
    return decode_ip6(addr.ip), socket.ntohs(addr.port), addr.proto


def addr_triple(addr: Addr | Orig) -> tuple[str, int, int]:
    return decode_ip(addr.ip), socket.ntohs(addr.port), addr.proto


# -- the check -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class Layout:
    """The byte layout of one C type: total size and named fields (empty for scalars)."""

    size: int
    fields: tuple[Field, ...]

    def describe(self) -> str:
        if not self.fields:
            return f"{self.size}-byte scalar"
        inner = ", ".join(f"{f.name}@{f.offset}:{f.size}" for f in self.fields)
        return f"{self.size} bytes {{{inner}}}"


def layout_of(ctype: type[ctypes._CData], *, ignore_prefix: str = "__pad") -> Layout:
    """The layout of a ctypes type; fields whose name starts with ignore_prefix (BCC's explicit
    padding) are left out."""
    fields: list[Field] = []
    if issubclass(ctype, ctypes.Structure):
        for entry in ctype._fields_:
            name = entry[0]
            if name.startswith(ignore_prefix):
                continue
            descriptor = getattr(ctype, name)
            fields.append(Field(name, descriptor.offset, descriptor.size))
    return Layout(ctypes.sizeof(ctype), tuple(fields))


@dataclass(frozen=True)
class CompiledMap:
    """What the compiler and the kernel say about one map."""

    name: str
    key: Layout
    value: Layout
    kernel_key_size: int
    kernel_value_size: int


def check_layouts(compiled: dict[str, CompiledMap]) -> list[str]:
    """Compare the compiled maps with MAPS; returns one sentence per mismatch (empty: all good)."""
    problems: list[str] = []
    for name, (key_type, value_type) in MAPS.items():
        got = compiled.get(name)
        if got is None:
            problems.append(f"map {name} is missing from the compiled programs")
            continue
        for part, mirror_type, c_layout, kernel_size in (
            ("key", key_type, got.key, got.kernel_key_size),
            ("value", value_type, got.value, got.kernel_value_size),
        ):
            mirror = layout_of(mirror_type)
            if mirror != c_layout:
                problems.append(f"map {name} {part}: C has {c_layout.describe()}, "
                                f"Python mirror has {mirror.describe()}")
            if mirror.size != kernel_size:
                problems.append(f"map {name} {part}: the kernel map has {kernel_size}-byte "
                                f"{part}s, Python mirror has {mirror.size}")
    return problems
