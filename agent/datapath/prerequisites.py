"""What the node must offer before the datapath compiles anything: privileges (checked by the
agent) and kernel headers for BCC (checked by the compiler process, which also imports BCC itself:
loader.import_bcc). Each check raises DatapathError with the fix."""

from __future__ import annotations

import os

from agent.datapath.errors import DatapathError

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39


def effective_capabilities(status: str = "/proc/self/status") -> int:
    with open(status) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    raise DatapathError(f"cannot read the effective capabilities from {status}")


def check_privileges() -> None:
    caps = effective_capabilities()

    def has(cap: int) -> bool:
        return bool(caps & (1 << cap))

    # Loading cgroup/sock_ops programs needs CAP_BPF + CAP_NET_ADMIN, attaching CAP_NET_ADMIN,
    # and walking other processes' links (leftover cleanup) CAP_SYS_ADMIN.
    if not (has(CAP_SYS_ADMIN) and has(CAP_NET_ADMIN) and (has(CAP_BPF) or os.geteuid() == 0)):
        raise DatapathError(
            f"not root: the datapath loads and attaches BPF programs, which needs root or CAP_BPF, "
            f"CAP_NET_ADMIN and CAP_SYS_ADMIN (this process: euid {os.geteuid()}, CapEff {caps:#x}); "
            "run the agent as root or as a privileged container")


def check_kernel_headers(release: str | None = None, modules_dir: str = "/lib/modules") -> None:
    release = release or os.uname().release
    build = f"{modules_dir}/{release}/build"
    if not os.path.isdir(build):
        why = "is a dangling symlink" if os.path.islink(build) else "does not exist"
        raise DatapathError(
            f"kernel headers missing: {build} {why}; BCC compiles the BPF programs on the node and needs "
            f"them: install linux-headers and link {build} and {modules_dir}/{release}/source to them "
            "(run make install)")
