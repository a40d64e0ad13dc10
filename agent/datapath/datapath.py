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

import errno
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.datapath import attachments, compilation, handoff, layout, libbpf, prerequisites
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


def _check_endpoint(ip: object, port: object, what: str) -> None:
    if not isinstance(ip, str):
        raise ValueError(f"{what}: address must be an IPv4 string, not {ip!r}")
    try:
        # strict dotted quad, like ipaddress.IPv4Address, without its ~15 us per call (this check
        # runs on every redirected connection)
        socket.inet_pton(socket.AF_INET, ip)
    except OSError:
        raise ValueError(f"{what}: {ip!r} is not an IPv4 address (a.b.c.d)") from None
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"{what}: port must be an integer in 1..65535, not {port!r}")


def _check_endpoint6(ip: object, port: object, what: str, *, v4: bool = False) -> None:
    """An IPv6 endpoint (or, with `v4`, an IPv4 one too: a proxy reached v4-mapped)."""
    if isinstance(ip, str) and ":" in ip:
        try:
            socket.inet_pton(socket.AF_INET6, ip)
        except OSError:
            raise ValueError(f"{what}: {ip!r} is not an IPv6 address") from None
        _check_endpoint("0.0.0.0", port, what)
        return
    if v4:
        _check_endpoint(ip, port, what)
        return
    raise ValueError(f"{what}: address must be an IPv6 string, not {ip!r}")


def _canonical6(ip: str) -> str:
    """The text form `decode_ip6` gives back (compressed IPv6; IPv4 as is)."""
    return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, ip)) if ":" in ip else ip


def _triple6(addr: layout.Addr6) -> tuple[str, int, int]:
    return layout.addr6_triple(addr)


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
                  udp: Mapping[tuple[str, int], tuple[str, int]] | None = None,
                  services6: Mapping[tuple[str, int], tuple[str, int]] | None = None) -> ReconcileResult:
        """Make the services map equal to `services` (TCP: (VIP, port) -> (proxy ip, proxy port))
        plus `udp` (UDP: (VIP, port) -> (relay ip, relay port), one relay socket per service), the
        relays map equal to the reverse of `udp`, and the IPv6 services map equal to `services6`
        (TCP: (VIP6, port) -> (proxy IPv6 address, or its IPv4 one, reached v4-mapped; port)):
        update changed entries, add new ones, delete stale ones. The whole input is validated
        before a map is touched (ValueError names the bad entry). The counts are of services entries
        of both families."""
        lib, programs = self._require_started()
        desired6: dict[tuple[str, int, int], tuple[str, int, int]] = {}
        for key, value in (services6 or {}).items():
            if not (isinstance(key, tuple) and len(key) == 2 and isinstance(value, tuple) and len(value) == 2):
                raise ValueError(f"service entry {key!r} -> {value!r}: expected (ip, port) -> (ip, port)")
            _check_endpoint6(*key, what=f"service {key!r}")
            _check_endpoint6(*value, what=f"proxy address of service {key!r}", v4=True)
            desired6[(_canonical6(key[0]), key[1], layout.IPPROTO_TCP)] = (_canonical6(value[0]), value[1],
                                                                          layout.IPPROTO_TCP)
        desired: dict[tuple[str, int, int], tuple[str, int, int]] = {}
        relays: dict[tuple[str, int, int], tuple[str, int, int]] = {}
        relays6: dict[tuple[str, int, int], tuple[str, int, int]] = {}
        for proto, entries in ((layout.IPPROTO_TCP, services), (layout.IPPROTO_UDP, udp or {})):
            for key, value in entries.items():
                if not (isinstance(key, tuple) and len(key) == 2 and isinstance(value, tuple) and len(value) == 2):
                    raise ValueError(f"service entry {key!r} -> {value!r}: expected (ip, port) -> (ip, port)")
                if proto == layout.IPPROTO_UDP and isinstance(key[0], str) and ":" in key[0]:
                    # a UDP VIP6: its relay is on the proxy's IPv6 address, or IPv4 (reached v4-mapped)
                    _check_endpoint6(*key, what=f"service {key!r}")
                    _check_endpoint6(*value, what=f"relay of service {key!r}", v4=True)
                    vip6 = (_canonical6(key[0]), key[1], proto)
                    relay = (_canonical6(value[0]), value[1], proto)
                    desired6[vip6] = relay
                    if relay in relays or relay in relays6:
                        other = (relays.get(relay) or relays6[relay])[:2]
                        raise ValueError(f"UDP services {other!r} and {key!r} share the relay {value!r}: "
                                         "each UDP service needs its own relay socket")
                    relays6[relay] = vip6
                    continue
                _check_endpoint(*key, what=f"service {key!r}")
                _check_endpoint(*value, what=f"proxy address of service {key!r}")
                desired[(*key, proto)] = (*value, proto)
                if proto == layout.IPPROTO_UDP:
                    relay = (*value, proto)
                    if relay in relays or relay in relays6:
                        other = (relays.get(relay) or relays6[relay])[:2]
                        raise ValueError(f"UDP services {other!r} and {key!r} share the relay {value!r}: "
                                         "each UDP service needs its own relay socket")
                    relays[relay] = (*key, proto)
        added, updated, removed = self._make_equal(lib, programs.map_fds["cl_services"], desired)
        self._make_equal(lib, programs.map_fds["cl_udp_relays"], relays)
        counts6 = self._make_equal(lib, programs.map_fds["cl_services6"], desired6, v6=True)
        self._make_equal(lib, programs.map_fds["cl_udp_relays6"], relays6, v6=True)
        added, updated, removed = added + counts6[0], updated + counts6[1], removed + counts6[2]
        if added or updated or removed:
            log.info("Services map of cgroup %s reconciled: %d added, %d updated, %d removed (%d total, %d UDP, "
                     "%d IPv6).", self._cgroup_path, added, updated, removed, len(desired) + len(desired6),
                     len(relays) + len(relays6), len(desired6))
        return ReconcileResult(added=added, updated=updated, removed=removed)

    @staticmethod
    def _make_equal(lib: libbpf.Libbpf, fd: int, desired: Mapping[tuple[str, int, int], tuple[str, int, int]],
                    *, v6: bool = False) -> tuple[int, int, int]:
        """Make an (ip, port, proto) -> (ip, port, proto) map equal to `desired`: (added, updated, removed)."""
        struct, triple, make = ((layout.Addr6, _triple6, layout.make_addr6) if v6 else
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
        None when there is no record (not a redirected connection, or already looked up)."""
        lib, programs = self._require_started()
        if not (isinstance(client_ip, str) and ":" in client_ip):
            _check_endpoint(client_ip, client_port, what="client")
            orig = layout.Orig()
            if lib.map_lookup_and_delete(programs.map_fds["cl_tuple_orig"],
                                         layout.make_addr(client_ip, client_port), orig):
                ip, port = layout.addr_tuple(orig)
                return Redirect(orig_ip=ip, orig_port=port, cgroup_id=orig.cgroup_id)
        else:
            _check_endpoint6(client_ip, client_port, what="client")
        # An AF_INET6 client (connect6): its own IPv6 address, or ::ffff:<IPv4> when it reached the
        # proxy v4-mapped (the proxy then sees an IPv4 peer).
        orig6 = layout.Orig6()
        if not lib.map_lookup_and_delete(programs.map_fds["cl_tuple_orig6"],
                                         layout.make_addr6(client_ip, client_port), orig6):
            return None
        ip, port, _ = layout.addr6_triple(orig6)
        return Redirect(orig_ip=ip, orig_port=port, cgroup_id=orig6.cgroup_id)

    def udp_sender(self, client_ip: str, client_port: int) -> Redirect | None:
        """Who sent the datagrams from client_ip:client_port to a UDP relay: the service's VIP:port
        and the sending socket's cgroup (recorded by egress.c). The record stays (it is refreshed by
        the client's datagrams, deleted by `forget_udp_sender` when the flow ends, or evicted); None
        when there is none (not a redirected datagram)."""
        lib, programs = self._require_started()
        if isinstance(client_ip, str) and ":" in client_ip:  # an IPv6 datagram (a relay on the IPv6 address)
            _check_endpoint6(client_ip, client_port, what="client")
            orig6 = layout.Orig6()
            if not lib.map_lookup(programs.map_fds["cl_tuple_orig6"],
                                  layout.make_addr6(client_ip, client_port, layout.IPPROTO_UDP), orig6):
                return None
            ip, port, _ = layout.addr6_triple(orig6)
            return Redirect(orig_ip=ip, orig_port=port, cgroup_id=orig6.cgroup_id)
        _check_endpoint(client_ip, client_port, what="client")
        orig = layout.Orig()
        if not lib.map_lookup(programs.map_fds["cl_tuple_orig"],
                              layout.make_addr(client_ip, client_port, layout.IPPROTO_UDP), orig):
            return None
        ip, port = layout.addr_tuple(orig)
        return Redirect(orig_ip=ip, orig_port=port, cgroup_id=orig.cgroup_id)

    def forget_udp_sender(self, client_ip: str, client_port: int) -> bool:
        """Delete the sender record of a UDP flow that ended (idle); True when there was one."""
        lib, programs = self._require_started()
        if isinstance(client_ip, str) and ":" in client_ip:
            _check_endpoint6(client_ip, client_port, what="client")
            return lib.map_delete(programs.map_fds["cl_tuple_orig6"],
                                  layout.make_addr6(client_ip, client_port, layout.IPPROTO_UDP))
        _check_endpoint(client_ip, client_port, what="client")
        return lib.map_delete(programs.map_fds["cl_tuple_orig"],
                              layout.make_addr(client_ip, client_port, layout.IPPROTO_UDP))

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
