"""The agent's kernel datapath: owns the BPF programs attached to one cgroup and their maps.

Lifecycle: the constructor only validates; `start()` checks privileges, has the compiler process
(compiler.py: BCC, in a short-lived child, so libbcc and LLVM never enter the agent) compile and
load the programs, create the maps and check the struct layouts, takes over their fds, checks them
with the kernel, removes leftovers of a crashed run and attaches every program as a bpf_link;
`stop()` detaches and closes everything (idempotent). In between, `reconcile()` makes the services
map equal to the desired state and `lookup()` answers the proxy's question "where did this accepted
connection want to go, and who asked?".

Not thread-safe: use one Datapath from one thread (the agent's event loop thread). Each call is a
few bpf(2) syscalls, except `start()` (about 1 s: starting the compiler process and compiling; at
most `compile_timeout`) and a cgroup rescan on a cache miss in `cgroup_path_for_id()`.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.datapath import attachments, compilation, handoff, layout, libbpf, prerequisites
from agent.datapath.plan import check_port, family_of, plan_services
from agent.datapath.programs import PROGRAMS, default_bpf_dir
from agent.datapath.cgroups import CgroupLock, CgroupResolver, cgroup_id, validate_cgroup_dir
from agent.datapath.errors import DatapathError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Redirect:
    """What a redirected connection originally connected to, and the cgroup of the caller."""

    orig_ip: str
    orig_port: int
    cgroup_id: int


@dataclass(frozen=True)
class ReconcileResult:
    added: int
    updated: int
    removed: int


def _tuple_key(ip: object, port: object, proto: int) -> tuple[str, ctypes.Structure, type[ctypes.Structure]]:
    """The tuple map, key and value type that hold the record of a client address (validated;
    ValueError otherwise): cl_tuple_orig for IPv4, cl_tuple_orig6 for IPv6."""
    family = family_of(ip, "client")
    check_port(port, "client")
    if family == socket.AF_INET6:
        return "cl_tuple_orig6", layout.make_addr6(ip, port, proto), layout.Orig6  # type: ignore[arg-type]
    return "cl_tuple_orig", layout.make_addr(ip, port, proto), layout.Orig  # type: ignore[arg-type]


def _redirect(orig: layout.Orig | layout.Orig6) -> Redirect:
    ip, port, _ = layout.addr6_triple(orig) if isinstance(orig, layout.Orig6) else layout.addr_triple(orig)
    return Redirect(orig_ip=ip, orig_port=port, cgroup_id=orig.cgroup_id)


class Datapath:
    """The BPF redirect on one cgroup (programs apply to it and to every cgroup below it).

    `owner` names this datapath in logs and errors. While started, it holds an exclusive flock on
    the cgroup directory: a second live datapath on the same cgroup is refused instead of silently
    detaching the first one's links (the kernel drops the lock when its holder dies, so a crashed
    run never blocks the next). `bpf_dir` overrides where bpf/*.c are read from. The compiler
    process gets `compile_timeout` seconds; after that it is killed and start() fails.
    """

    def __init__(self, cgroup_path: str, *, owner: str = "clusterlink-agent",
                 bpf_dir: str | os.PathLike[str] | None = None,
                 compile_timeout: float = compilation.DEFAULT_TIMEOUT_S) -> None:
        self._cgroup_path, self._mount = validate_cgroup_dir(cgroup_path)
        if not owner:
            raise DatapathError("owner must be a non-empty name (it appears in logs and errors)")
        if not compile_timeout > 0:
            raise DatapathError(f"compile_timeout must be a positive number of seconds, not {compile_timeout!r}")
        self._owner = owner
        self._bpf_dir = Path(bpf_dir) if bpf_dir is not None else default_bpf_dir()
        self._compile_timeout = compile_timeout
        self._resolver = CgroupResolver(self._mount)
        self._lib: libbpf.Libbpf | None = None
        self._lock: CgroupLock | None = None
        self._programs: handoff.KernelObjects | None = None
        self._links: dict[str, int] = {}  # program name -> link fd

    def __repr__(self) -> str:
        state = "started" if self._programs is not None else "stopped"
        return f"Datapath({self._cgroup_path!r}, owner={self._owner!r}, {state})"

    @property
    def cgroup_path(self) -> str:
        return self._cgroup_path

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._programs is not None:
            raise DatapathError(f"{self!r}: start() called twice")
        prerequisites.check_privileges()
        # The path was fine at construction; it may be gone now.
        self._cgroup_path, self._mount = validate_cgroup_dir(self._cgroup_path)
        try:
            self._lib = libbpf.Libbpf()
        except OSError as exc:
            raise DatapathError(str(exc)) from exc
        self._lock = CgroupLock(self._cgroup_path, self._owner)
        cg_fd = self._lock.acquire()
        try:
            self._programs = compilation.compile_in_child(self._bpf_dir, timeout=self._compile_timeout,
                                                          owner=self._owner)
            compilation.verify(self._programs, self._lib)
            cg_id = cgroup_id(self._cgroup_path)
            try:
                removed = attachments.remove_ours(self._lib, cg_fd, cg_id, self._cgroup_path)
            except OSError as exc:
                raise DatapathError(f"cannot inspect the BPF attachments of cgroup {self._cgroup_path}: "
                                    f"{exc}") from exc
            for att in removed:
                log.warning("Removed a leftover attachment from cgroup %s (a crashed earlier run?): %s.",
                            self._cgroup_path, att.describe())
            for spec in PROGRAMS:
                try:
                    self._links[spec.name] = self._lib.link_create(
                        self._programs.prog_fds[spec.name], cg_fd, spec.attach_type)
                except OSError as exc:
                    hint = (" (a non-multi legacy attachment of another tool is in the way: "
                            "bpftool cgroup show " + self._cgroup_path + ")") if exc.errno == errno.EPERM else ""
                    raise DatapathError(f"cannot attach {spec.name} to cgroup {self._cgroup_path}: "
                                        f"{exc}{hint}") from exc
        except BaseException:
            self._release()
            raise
        log.info("Datapath of %s attached %s to cgroup %s.", self._owner, ", ".join(self._links),
                 self._cgroup_path)

    def stop(self) -> None:
        """Detach every link and close every fd. Idempotent. Raises DatapathError (after releasing
        everything) if one of our programs is still attached afterwards."""
        if self._programs is None and self._lock is None:
            return
        try:
            our_prog_ids = self._our_prog_ids()
        finally:
            self._release()
        lib = libbpf.Libbpf()
        fd = os.open(self._cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) \
            if os.path.isdir(self._cgroup_path) else None
        if fd is None:
            return  # the cgroup is gone, and with it every attachment
        try:
            still = [a for a in attachments.attached_to(lib, fd, cgroup_id(self._cgroup_path))
                     if a.prog_id in our_prog_ids]
        finally:
            os.close(fd)
        if still:
            raise DatapathError(f"after stop, cgroup {self._cgroup_path} still has: "
                                + "; ".join(a.describe() for a in still))
        log.info("Datapath of %s detached from cgroup %s.", self._owner, self._cgroup_path)

    def _our_prog_ids(self) -> set[int]:
        if self._programs is None or self._lib is None:
            return set()
        return {self._lib.prog_info(fd).id for fd in self._programs.prog_fds.values()}

    def _release(self) -> None:
        """Detach and close everything we hold; each step runs even if an earlier one failed."""
        lib = self._lib
        for name, link_fd in list(self._links.items()):
            try:
                if lib is not None:
                    lib.link_detach(link_fd)
            except OSError as exc:
                # Closing the fd below detaches it anyway (unless someone else holds the link).
                log.warning("Could not detach %s from cgroup %s (%s); closing its link.", name,
                            self._cgroup_path, exc)
            finally:
                os.close(link_fd)
                del self._links[name]
        if self._programs is not None:
            programs, self._programs = self._programs, None
            programs.close()
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.release()

    def _require_started(self) -> tuple[libbpf.Libbpf, handoff.KernelObjects]:
        if self._programs is None or self._lib is None:
            raise DatapathError(f"{self!r} is not started: call start() first")
        return self._lib, self._programs

    # -- maps ------------------------------------------------------------------------------------

    def reconcile(self, services: Mapping[tuple[str, int], tuple[str, int]],
                  udp: Mapping[tuple[str, int], tuple[str, int]] | None = None) -> ReconcileResult:
        """Make the services maps equal to `services` (TCP: (VIP, port) -> (proxy ip, proxy port);
        an IPv6 VIP may go to the proxy's IPv6 address or, v4-mapped, to its IPv4 one) and `udp`
        ((VIP, port) -> (relay ip, relay port), one relay socket per service), and the relays maps
        equal to the reverse of `udp` (`plan.plan_services` says which entry goes to which map):
        update changed entries, add new ones, delete stale ones. The whole input is validated
        before a map is touched (ValueError names the bad entry). The counts are of services
        entries of both families."""
        lib, programs = self._require_started()
        p = plan_services(services, udp)
        fds = programs.map_fds
        counts4 = self._make_equal(lib, fds["cl_services"], p.services)
        self._make_equal(lib, fds["cl_udp_relays"], p.udp_relays)
        counts6 = self._make_equal(lib, fds["cl_services6"], p.services6, v6=True)
        self._make_equal(lib, fds["cl_udp_relays6"], p.udp_relays6, v6=True)
        added, updated, removed = (a + b for a, b in zip(counts4, counts6))
        if added or updated or removed:
            log.info("Services map of cgroup %s reconciled: %d added, %d updated, %d removed (%d total, %d UDP, "
                     "%d IPv6).", self._cgroup_path, added, updated, removed, len(p.services) + len(p.services6),
                     len(p.udp_relays) + len(p.udp_relays6), len(p.services6))
        return ReconcileResult(added=added, updated=updated, removed=removed)

    @staticmethod
    def _make_equal(lib: libbpf.Libbpf, fd: int, desired: Mapping[tuple[str, int, int], tuple[str, int, int]],
                    *, v6: bool = False) -> tuple[int, int, int]:
        """Make an (ip, port, proto) -> (ip, port, proto) map equal to `desired`: (added, updated, removed)."""
        struct, triple, make = ((layout.Addr6, layout.addr6_triple, layout.make_addr6) if v6 else
                                (layout.Addr, layout.addr_triple, layout.make_addr))
        current: dict[tuple[str, int, int], tuple[str, int, int]] = {}
        for raw_key in lib.map_keys(fd, struct, limit=1 << 20):
            value = struct()
            if lib.map_lookup(fd, raw_key, value):
                current[triple(raw_key)] = triple(value)
        added = updated = removed = 0
        for key, value in desired.items():
            old = current.get(key)
            if old == value:
                continue
            lib.map_update(fd, make(*key), make(*value))
            if old is None:
                added += 1
            else:
                updated += 1
        for key in current.keys() - desired.keys():
            if lib.map_delete(fd, make(*key)):
                removed += 1
        return added, updated, removed

    def lookup(self, client_ip: str, client_port: int) -> Redirect | None:
        """The original destination of the redirected connection from client_ip:client_port (the
        peer address of the connection the proxy accepted), removed from the map as it is read.
        None when there is no record (not a redirected connection, or already looked up). An
        AF_INET6 client's record (connect6) is under its IPv6 address, or under ::ffff:<IPv4> when
        it reached the proxy v4-mapped (the proxy then sees an IPv4 peer)."""
        lib, programs = self._require_started()
        name, key, value_type = _tuple_key(client_ip, client_port, layout.IPPROTO_TCP)
        orig = value_type()
        if lib.map_lookup_and_delete(programs.map_fds[name], key, orig):
            return _redirect(orig)
        if name == "cl_tuple_orig":  # an IPv4 peer may be a v4-mapped AF_INET6 client
            orig6 = layout.Orig6()
            if lib.map_lookup_and_delete(programs.map_fds["cl_tuple_orig6"],
                                         layout.make_addr6(client_ip, client_port), orig6):
                return _redirect(orig6)
        return None

    def udp_sender(self, client_ip: str, client_port: int) -> Redirect | None:
        """Who sent the datagrams from client_ip:client_port to a UDP relay: the service's VIP:port
        and the sending socket's cgroup (recorded by egress.c; IPv6 datagrams to a relay on the
        proxy's IPv6 address in the IPv6 map). The record stays (it is refreshed by the client's
        datagrams, deleted by `forget_udp_sender` when the flow ends, or evicted); None when there
        is none (not a redirected datagram)."""
        lib, programs = self._require_started()
        name, key, value_type = _tuple_key(client_ip, client_port, layout.IPPROTO_UDP)
        orig = value_type()
        return _redirect(orig) if lib.map_lookup(programs.map_fds[name], key, orig) else None

    def forget_udp_sender(self, client_ip: str, client_port: int) -> bool:
        """Delete the sender record of a UDP flow that ended (idle); True when there was one."""
        lib, programs = self._require_started()
        name, key, _ = _tuple_key(client_ip, client_port, layout.IPPROTO_UDP)
        return lib.map_delete(programs.map_fds[name], key)

    def attached(self) -> list[str]:
        """Names of the programs currently attached by this datapath."""
        return list(self._links)

    def cgroup_path_for_id(self, cgroup_id: int) -> str | None:
        """The path of a cgroup, relative to the cgroup2 mount, in the form of /proc/<pid>/cgroup
        ("/kubepods/pod1", "/" for the root); None when no cgroup has that id (any more)."""
        return self._resolver.resolve(cgroup_id)

    # -- introspection for metrics and tests -----------------------------------------------------

    def map_ids(self) -> dict[str, int]:
        """Kernel ids of our maps (for bpftool and metrics)."""
        lib, programs = self._require_started()
        return {name: lib.map_info(fd).id for name, fd in programs.map_fds.items()}
