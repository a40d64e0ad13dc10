"""cgroup v2 facts the datapath needs: validating a cgroup directory, the cgroup2 mount, cgroup
ids (the inode number of a cgroup2 directory, what bpf_get_current_cgroup_id() returns) and
resolving them back to paths, and the per-cgroup lock that keeps two live datapaths off one cgroup.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from dataclasses import dataclass

from agent.datapath.errors import DatapathError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    result = []
    with open(mountinfo) as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            result.append(Mount(mount_point=_unescape(fields[4]), fstype=right.split()[0]))
    return result


def mount_of(path: str, all_mounts: list[Mount]) -> Mount | None:
    """The mount that holds path (the longest mount point that is a prefix; later mounts win)."""
    best: Mount | None = None
    for m in all_mounts:
        mp = m.mount_point
        if path == mp or path.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mount_point):
                best = m
    return best


def validate_cgroup_dir(cgroup_path: str) -> tuple[str, str]:
    """Check that cgroup_path is a directory of a cgroup v2 hierarchy.
    Returns (real path, the cgroup2 mount point); raises DatapathError saying what is wrong."""
    if not isinstance(cgroup_path, str) or not cgroup_path:
        raise DatapathError(f"cgroup path must be a non-empty string, not {cgroup_path!r}")
    real = os.path.realpath(cgroup_path)
    all_mounts = mounts()
    cgroup2 = sorted({m.mount_point for m in all_mounts if m.fstype == "cgroup2"})
    hint = (f"cgroup v2 is mounted at {', '.join(cgroup2)}" if cgroup2
            else "no cgroup v2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)")
    if not os.path.exists(real):
        raise DatapathError(f"cgroup path {cgroup_path} does not exist: pass a directory of the cgroup v2 "
                            f"hierarchy (create it with mkdir); {hint}")
    if not os.path.isdir(real):
        raise DatapathError(f"cgroup path {cgroup_path} is not a directory; {hint}")
    mount = mount_of(real, all_mounts)
    if mount is None or mount.fstype != "cgroup2":
        where = f"a {mount.fstype} mount at {mount.mount_point}" if mount else "no known mount"
        raise DatapathError(f"cgroup path {cgroup_path} is not in a cgroup v2 hierarchy (it is on {where}); "
                            f"the BPF cgroup programs need cgroup v2: {hint}")
    return real, mount.mount_point


AUTO = "auto"
KUBELET_PARENTS = ("kubepods.slice", "kubepods")  # the systemd cgroup driver's, then cgroupfs'


def resolve_cgroup(value: str, all_mounts: list[Mount] | None = None) -> str:
    """--cgroup: a directory as it is, or `auto`: the kubelet's pods cgroup under the cgroup v2
    mount (kubepods.slice with the systemd cgroup driver, kubepods with cgroupfs)."""
    if value != AUTO:
        return value
    points = sorted({m.mount_point for m in (all_mounts if all_mounts is not None else mounts())
                     if m.fstype == "cgroup2"})
    if not points:
        raise DatapathError("--cgroup auto: no cgroup v2 hierarchy is mounted")
    for point in points:
        for name in KUBELET_PARENTS:
            candidate = os.path.join(point, name)
            if os.path.isdir(candidate):
                return candidate
    tried = ", ".join(os.path.join(p, n) for p in points for n in KUBELET_PARENTS)
    raise DatapathError(f"--cgroup auto: no kubelet pods cgroup found (tried {tried}); pass --cgroup with the "
                        "directory that holds the pods' cgroups")


def cgroup_id(path: str) -> int:
    """The cgroup v2 id of a cgroup directory: the inode number (kernfs id) of the directory."""
    return os.stat(path).st_ino


class CgroupResolver:
    """cgroup id -> path relative to the cgroup2 mount ("/a/b", "/" for the root, the form of
    /proc/<pid>/cgroup), with a cache that is rebuilt by rescanning the hierarchy on a miss."""

    def __init__(self, mount_point: str) -> None:
        self._mount = mount_point.rstrip("/") or "/"
        self._cache: dict[int, str] = {}

    def resolve(self, cid: int) -> str | None:
        path = self._cache.get(cid)
        if path is not None:
            # Ids are never reused (64-bit kernfs ids), but the directory may be gone, or gone and
            # re-created under the same name (a new id).
            try:
                if os.stat(self._absolute(path)).st_ino == cid:
                    return path
            except FileNotFoundError:
                pass
            del self._cache[cid]
        self._cache = self._scan()
        return self._cache.get(cid)

    def _absolute(self, rel: str) -> str:
        return self._mount if rel == "/" else self._mount + rel

    def _scan(self) -> dict[int, str]:
        found: dict[int, str] = {}
        stack = [self._mount]
        while stack:
            current = stack.pop()
            try:
                st = os.stat(current)
                entries = list(os.scandir(current))
            except FileNotFoundError:
                continue  # removed while we walked
            rel = "/" + os.path.relpath(current, self._mount) if current != self._mount else "/"
            found[st.st_ino] = rel
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
        return found


class CgroupLock:
    """An exclusive flock on the cgroup directory itself, held while a datapath manages it. The
    kernel drops it when the holder dies, so it never outlives a crashed agent."""

    def __init__(self, real_path: str, owner: str) -> None:
        self._path = real_path
        self._owner = owner
        self.fd: int | None = None

    def acquire(self) -> int:
        """Opens the cgroup directory, locks it and returns the fd (also used to attach programs)."""
        fd = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holders = lock_holders(os.fstat(fd))
            os.close(fd)
            who = f"process {', '.join(map(str, holders))}" if holders else "another process"
            raise DatapathError(
                f"cgroup {self._path} is already managed by a live datapath ({who} holds its lock); "
                f"{self._owner} will not take over its attachments: stop the other one first") from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return fd

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing the only fd of the open file releases the flock


def lock_holders(st: os.stat_result, locks: str = "/proc/locks") -> list[int]:
    """PIDs holding a FLOCK on the file (from /proc/locks: "1: FLOCK ADVISORY WRITE pid maj:min:ino ...")."""
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids = []
    try:
        with open(locks) as f:
            lines = f.readlines()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise
    for line in lines:
        fields = line.split()
        if "->" in fields:
            fields.remove("->")  # blocked waiters
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        major, minor, ino = fields[5].split(":")
        if (int(major, 16), int(minor, 16), int(ino)) == want:
            pids.append(int(fields[4]))
    return pids
