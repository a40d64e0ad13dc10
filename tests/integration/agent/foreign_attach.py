"""Simulates another (crashed or foreign) run on a cgroup, as a subprocess: loads our programs (with
BCC in this process, as older agents did) and attaches them either the legacy way (BPF_PROG_ATTACH,
the syscall behind BCC's attach_func; it outlives this process) and exits, or as links it holds
until killed.

    python -m tests.integration.agent.foreign_attach <cgroup> legacy <flags>
    python -m tests.integration.agent.foreign_attach <cgroup> links
"""

import os
import sys
import time

from agent.datapath import libbpf, loader, programs as specs


def main() -> None:
    cgroup, mode = sys.argv[1], sys.argv[2]
    lib = libbpf.Libbpf()
    programs = loader.load(specs.default_bpf_dir(), lib=lib)
    cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    ids = []
    for spec in specs.PROGRAMS:
        fd = programs.prog_fds[spec.name]
        if mode == "legacy":
            lib.prog_attach_legacy(fd, cg_fd, spec.attach_type, int(sys.argv[3]))
        else:
            lib.link_create(fd, cg_fd, spec.attach_type)
        ids.append(lib.prog_info(fd).id)
    print(" ".join(map(str, ids)), flush=True)
    if mode == "links":
        while True:
            time.sleep(60)  # hold the links until killed


if __name__ == "__main__":
    main()
