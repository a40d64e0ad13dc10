"""The bpf(2) calls the datapath needs that BCC does not offer, through ctypes on libbpf.so.1.

BCC compiles and loads the programs; this module attaches them as bpf_links (which the kernel
removes when the last file descriptor closes, so a crashed agent leaves nothing attached), finds
and detaches what is attached to a cgroup, reads object info, and does map operations with our own
ctypes structs (agent/datapath/layout.py). Every failing call raises OSError with the errno and the
name of the libbpf function; callers translate it into DatapathError where it matters.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

# enum bpf_attach_type (include/uapi/linux/bpf.h): the cgroup ones.
BPF_CGROUP_INET_INGRESS = 0
BPF_CGROUP_INET_EGRESS = 1
BPF_CGROUP_INET_SOCK_CREATE = 2
BPF_CGROUP_SOCK_OPS = 3
BPF_CGROUP_DEVICE = 6
BPF_CGROUP_INET4_BIND = 8
BPF_CGROUP_INET6_BIND = 9
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_INET6_CONNECT = 11
BPF_CGROUP_INET4_POST_BIND = 12
BPF_CGROUP_INET6_POST_BIND = 13
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP6_SENDMSG = 15
BPF_CGROUP_SYSCTL = 18
BPF_CGROUP_UDP4_RECVMSG = 19
BPF_CGROUP_UDP6_RECVMSG = 20
BPF_CGROUP_GETSOCKOPT = 21
BPF_CGROUP_SETSOCKOPT = 22
BPF_CGROUP_INET4_GETPEERNAME = 29
BPF_CGROUP_INET6_GETPEERNAME = 30
BPF_CGROUP_INET4_GETSOCKNAME = 31
BPF_CGROUP_INET6_GETSOCKNAME = 32
BPF_CGROUP_INET_SOCK_RELEASE = 34

CGROUP_ATTACH_TYPES: dict[int, str] = {
    BPF_CGROUP_INET_INGRESS: "ingress",
    BPF_CGROUP_INET_EGRESS: "egress",
    BPF_CGROUP_INET_SOCK_CREATE: "sock_create",
    BPF_CGROUP_SOCK_OPS: "sock_ops",
    BPF_CGROUP_DEVICE: "device",
    BPF_CGROUP_INET4_BIND: "bind4",
    BPF_CGROUP_INET6_BIND: "bind6",
    BPF_CGROUP_INET4_CONNECT: "connect4",
    BPF_CGROUP_INET6_CONNECT: "connect6",
    BPF_CGROUP_INET4_POST_BIND: "post_bind4",
    BPF_CGROUP_INET6_POST_BIND: "post_bind6",
    BPF_CGROUP_UDP4_SENDMSG: "sendmsg4",
    BPF_CGROUP_UDP6_SENDMSG: "sendmsg6",
    BPF_CGROUP_SYSCTL: "sysctl",
    BPF_CGROUP_UDP4_RECVMSG: "recvmsg4",
    BPF_CGROUP_UDP6_RECVMSG: "recvmsg6",
    BPF_CGROUP_GETSOCKOPT: "getsockopt",
    BPF_CGROUP_SETSOCKOPT: "setsockopt",
    BPF_CGROUP_INET4_GETPEERNAME: "getpeername4",
    BPF_CGROUP_INET6_GETPEERNAME: "getpeername6",
    BPF_CGROUP_INET4_GETSOCKNAME: "getsockname4",
    BPF_CGROUP_INET6_GETSOCKNAME: "getsockname6",
    BPF_CGROUP_INET_SOCK_RELEASE: "sock_release",
}

BPF_F_ALLOW_MULTI = 1 << 1
BPF_ANY = 0
BPF_LINK_TYPE_CGROUP = 3
BPF_OBJ_NAME_LEN = 16


class _ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info, up to and including the name."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class _MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info, up to and including the name."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class _LinkInfo(ctypes.Structure):
    """The head of struct bpf_link_info with its union read as the cgroup variant."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("_hole", ctypes.c_uint32),  # the union is 8-byte aligned
        ("cgroup_id", ctypes.c_uint64),
        ("attach_type", ctypes.c_uint32),
        ("_rest", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    name: str


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


@dataclass(frozen=True)
class LinkInfo:
    id: int
    type: int
    prog_id: int
    cgroup_id: int  # only meaningful when type == BPF_LINK_TYPE_CGROUP
    attach_type: int


class Libbpf:
    """A typed handle on libbpf.so.1 (one per user; dlopen shares the library itself)."""

    def __init__(self, path: str = "libbpf.so.1") -> None:
        try:
            lib = ctypes.CDLL(path, use_errno=True)
        except OSError as exc:
            raise OSError(errno.ENOENT, f"cannot load {path} (install libbpf1): {exc}") from exc
        c_int, c_uint32, c_uint64, vp = ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_void_p
        u32p = ctypes.POINTER(c_uint32)
        signatures = {
            "bpf_link_create": ([c_int, c_int, c_int, vp], c_int),
            "bpf_link_detach": ([c_int], c_int),
            "bpf_link_get_next_id": ([c_uint32, u32p], c_int),
            "bpf_link_get_fd_by_id": ([c_uint32], c_int),
            "bpf_prog_get_fd_by_id": ([c_uint32], c_int),
            "bpf_prog_query": ([c_int, c_int, c_uint32, u32p, u32p, u32p], c_int),
            "bpf_prog_attach": ([c_int, c_int, c_int, ctypes.c_uint], c_int),
            "bpf_prog_detach2": ([c_int, c_int, c_int], c_int),
            "bpf_obj_get_info_by_fd": ([c_int, vp, u32p], c_int),
            "bpf_map_update_elem": ([c_int, vp, vp, c_uint64], c_int),
            "bpf_map_lookup_elem": ([c_int, vp, vp], c_int),
            "bpf_map_delete_elem": ([c_int, vp], c_int),
            "bpf_map_lookup_and_delete_elem": ([c_int, vp, vp], c_int),
            "bpf_map_get_next_key": ([c_int, vp, vp], c_int),
        }
        for name, (argtypes, restype) in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = restype
        self._lib = lib

    @staticmethod
    def _check(rc: int, what: str) -> int:
        # libbpf >= 1.0 returns -errno on failure (and also sets errno).
        if rc < 0:
            err = -rc if rc != -1 else (ctypes.get_errno() or errno.EIO)
            raise OSError(err, f"{what}: {os.strerror(err)}")
        return rc

    # -- links and attachments -------------------------------------------------------------

    def link_create(self, prog_fd: int, target_fd: int, attach_type: int) -> int:
        """Attach a program to a cgroup as a bpf_link; returns the link fd (close it to detach).
        Cgroup links always coexist with other multi attachments (BPF_F_ALLOW_MULTI semantics)."""
        return self._check(self._lib.bpf_link_create(prog_fd, target_fd, attach_type, None),
                           f"bpf_link_create(attach_type={attach_type})")

    def link_detach(self, link_fd: int) -> None:
        self._check(self._lib.bpf_link_detach(link_fd), "bpf_link_detach")

    def link_ids(self) -> list[int]:
        ids: list[int] = []
        current = ctypes.c_uint32(0)
        while True:
            nxt = ctypes.c_uint32(0)
            rc = self._lib.bpf_link_get_next_id(current.value, ctypes.byref(nxt))
            if rc < 0 and -rc == errno.ENOENT:
                return ids
            self._check(rc, "bpf_link_get_next_id")
            ids.append(nxt.value)
            current = nxt

    def link_fd_by_id(self, link_id: int) -> int:
        return self._check(self._lib.bpf_link_get_fd_by_id(link_id), f"bpf_link_get_fd_by_id({link_id})")

    def prog_fd_by_id(self, prog_id: int) -> int:
        return self._check(self._lib.bpf_prog_get_fd_by_id(prog_id), f"bpf_prog_get_fd_by_id({prog_id})")

    def prog_query(self, target_fd: int, attach_type: int) -> list[int]:
        """Ids of the programs attached directly to target_fd for attach_type (links and legacy)."""
        size = 64
        while True:
            ids = (ctypes.c_uint32 * size)()
            count = ctypes.c_uint32(size)
            flags = ctypes.c_uint32(0)
            rc = self._lib.bpf_prog_query(target_fd, attach_type, 0, ctypes.byref(flags), ids,
                                          ctypes.byref(count))
            if rc < 0 and -rc == errno.ENOSPC:
                size = max(size * 2, count.value)
                continue
            self._check(rc, f"bpf_prog_query(attach_type={attach_type})")
            return list(ids[: count.value])

    def prog_attach_legacy(self, prog_fd: int, target_fd: int, attach_type: int, flags: int) -> None:
        """BPF_PROG_ATTACH: outlives the process. The datapath never uses it (tests do, to
        simulate a crashed run of an older agent)."""
        self._check(self._lib.bpf_prog_attach(prog_fd, target_fd, attach_type, flags),
                    f"bpf_prog_attach(attach_type={attach_type})")

    def prog_detach(self, prog_fd: int, target_fd: int, attach_type: int) -> None:
        """BPF_PROG_DETACH of one legacy (non-link) attachment."""
        self._check(self._lib.bpf_prog_detach2(prog_fd, target_fd, attach_type),
                    f"bpf_prog_detach2(attach_type={attach_type})")

    # -- object info ---------------------------------------------------------------------------

    def _info(self, fd: int, struct: ctypes.Structure, what: str) -> None:
        length = ctypes.c_uint32(ctypes.sizeof(struct))
        self._check(self._lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(struct), ctypes.byref(length)),
                    f"bpf_obj_get_info_by_fd({what})")

    def prog_info(self, prog_fd: int) -> ProgInfo:
        info = _ProgInfo()
        self._info(prog_fd, info, "prog")
        return ProgInfo(id=info.id, type=info.type, name=info.name.decode(errors="replace"))

    def map_info(self, map_fd: int) -> MapInfo:
        info = _MapInfo()
        self._info(map_fd, info, "map")
        return MapInfo(id=info.id, type=info.type, key_size=info.key_size,
                       value_size=info.value_size, max_entries=info.max_entries,
                       name=info.name.decode(errors="replace"))

    def link_info(self, link_fd: int) -> LinkInfo:
        info = _LinkInfo()
        self._info(link_fd, info, "link")
        return LinkInfo(id=info.id, type=info.type, prog_id=info.prog_id,
                        cgroup_id=info.cgroup_id, attach_type=info.attach_type)

    # -- maps ----------------------------------------------------------------------------------

    def map_update(self, map_fd: int, key: ctypes._CData, value: ctypes._CData, flags: int = BPF_ANY) -> None:
        self._check(self._lib.bpf_map_update_elem(map_fd, ctypes.byref(key), ctypes.byref(value), flags),
                    "bpf_map_update_elem")

    def map_lookup(self, map_fd: int, key: ctypes._CData, value: ctypes._CData) -> bool:
        """Fills value; False when the key is absent."""
        rc = self._lib.bpf_map_lookup_elem(map_fd, ctypes.byref(key), ctypes.byref(value))
        if rc < 0 and -rc == errno.ENOENT:
            return False
        self._check(rc, "bpf_map_lookup_elem")
        return True

    def map_lookup_and_delete(self, map_fd: int, key: ctypes._CData, value: ctypes._CData) -> bool:
        rc = self._lib.bpf_map_lookup_and_delete_elem(map_fd, ctypes.byref(key), ctypes.byref(value))
        if rc < 0 and -rc == errno.ENOENT:
            return False
        self._check(rc, "bpf_map_lookup_and_delete_elem")
        return True

    def map_delete(self, map_fd: int, key: ctypes._CData) -> bool:
        """False when the key was already absent."""
        rc = self._lib.bpf_map_delete_elem(map_fd, ctypes.byref(key))
        if rc < 0 and -rc == errno.ENOENT:
            return False
        self._check(rc, "bpf_map_delete_elem")
        return True

    def map_keys(self, map_fd: int, key_type: type[ctypes._CData], *, limit: int) -> list[ctypes._CData]:
        """The keys of a map that only the caller modifies. (If another writer deleted the key the
        walk stands on, the kernel restarts the walk; limit, e.g. max_entries, bounds that.)"""
        keys = []
        prev = None
        while True:
            if len(keys) > limit:
                raise OSError(errno.E2BIG, f"bpf_map_get_next_key: more than {limit} keys (map changing under the walk?)")
            nxt = key_type()
            rc = self._lib.bpf_map_get_next_key(map_fd, None if prev is None else ctypes.byref(prev),
                                                ctypes.byref(nxt))
            if rc < 0 and -rc == errno.ENOENT:
                return keys
            self._check(rc, "bpf_map_get_next_key")
            keys.append(nxt)
            prev = nxt
