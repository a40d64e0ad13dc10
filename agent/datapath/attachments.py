"""Finding, attaching and detaching our programs on a cgroup.

"Ours" means a program whose kernel name starts with the ownership prefix ("cl_"). We attach
only as bpf_links (detached by the kernel when the last fd closes, so a crashed agent leaves
nothing); `remove_ours` also removes what a crashed older run or a foreign tool left: links still
held by some process and legacy BPF_PROG_ATTACH attachments, which outlive their process.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass

from agent.datapath import libbpf
from agent.datapath.cgroups import cgroup_id, validate_cgroup_dir
from agent.datapath.errors import DatapathError
from agent.datapath.programs import PROGRAM_PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attachment:
    """One program attached to a cgroup: as a link (link_id set) or the legacy way (link_id None)."""

    attach_type: int
    prog_id: int
    prog_name: str
    link_id: int | None

    def describe(self) -> str:
        kind = f"link {self.link_id}" if self.link_id is not None else "legacy attach"
        where = libbpf.CGROUP_ATTACH_TYPES.get(self.attach_type, str(self.attach_type))
        return f"{self.prog_name} (prog {self.prog_id}) on {where} by {kind}"


def _prog_name(lib: libbpf.Libbpf, prog_id: int) -> str | None:
    try:
        fd = lib.prog_fd_by_id(prog_id)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None  # unloaded meanwhile
        raise
    try:
        return lib.prog_info(fd).name
    finally:
        os.close(fd)


def attached_to(lib: libbpf.Libbpf, cg_fd: int, cg_id: int, prefix: str = PROGRAM_PREFIX) -> list[Attachment]:
    """Our programs attached directly to the cgroup (every cgroup attach type is looked at)."""
    links: dict[tuple[int, int], int] = {}  # (attach_type, prog_id) -> link id
    for link_id in lib.link_ids():
        try:
            fd = lib.link_fd_by_id(link_id)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                continue  # released meanwhile
            raise
        try:
            info = lib.link_info(fd)
        finally:
            os.close(fd)
        if info.type == libbpf.BPF_LINK_TYPE_CGROUP and info.cgroup_id == cg_id:
            links[(info.attach_type, info.prog_id)] = link_id
    found: list[Attachment] = []
    for attach_type in libbpf.CGROUP_ATTACH_TYPES:
        try:
            prog_ids = lib.prog_query(cg_fd, attach_type)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                continue  # an attach type this kernel does not know
            raise
        for prog_id in prog_ids:
            name = _prog_name(lib, prog_id)
            if name is None or not name.startswith(prefix):
                continue
            found.append(Attachment(attach_type, prog_id, name, links.get((attach_type, prog_id))))
    return found


def detach(lib: libbpf.Libbpf, cg_fd: int, att: Attachment) -> bool:
    """Detach one attachment; False when it was already gone."""
    try:
        if att.link_id is not None:
            fd = lib.link_fd_by_id(att.link_id)
            try:
                lib.link_detach(fd)
            finally:
                os.close(fd)
        else:
            fd = lib.prog_fd_by_id(att.prog_id)
            try:
                lib.prog_detach(fd, cg_fd, att.attach_type)
            finally:
                os.close(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOLINK):
            return False
        raise
    return True


def remove_ours(lib: libbpf.Libbpf, cg_fd: int, cg_id: int, cg_path: str) -> list[Attachment]:
    """Detach every program of ours from the cgroup; returns what was detached. Raises
    DatapathError when something of ours is still attached afterwards."""
    removed = []
    for att in attached_to(lib, cg_fd, cg_id):
        try:
            if detach(lib, cg_fd, att):
                removed.append(att)
        except OSError as exc:
            raise DatapathError(f"cannot detach {att.describe()} from cgroup {cg_path}: {exc}") from exc
    left = attached_to(lib, cg_fd, cg_id)
    if left:
        raise DatapathError(f"programs of ours are still attached to cgroup {cg_path} after detaching: "
                            + "; ".join(a.describe() for a in left))
    return removed


def cleanup_cgroup(cgroup_path: str) -> list[str]:
    """Detach all of our programs (prefix "cl_") from a cgroup, whoever attached them, links and
    legacy attachments alike. For cleanup tools after a crash; do not run it against a live agent.
    Returns one description per detached attachment."""
    real, _mount = validate_cgroup_dir(cgroup_path)
    try:
        lib = libbpf.Libbpf()
    except OSError as exc:
        raise DatapathError(str(exc)) from exc
    fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        removed = remove_ours(lib, fd, cgroup_id(real), real)
    except OSError as exc:
        raise DatapathError(f"cannot inspect the BPF attachments of cgroup {real}: {exc} "
                            "(root or CAP_SYS_ADMIN is needed)") from exc
    finally:
        os.close(fd)
    for att in removed:
        log.info("Detached %s from cgroup %s.", att.describe(), real)
    return [att.describe() for att in removed]
