"""The CPUs a gateway may use, from a copy of /proc/self and the cgroup files (v1 and v2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from controlplane.gateway.cpus import available_cpus, cgroup_cpu_limit

V2_MOUNT = "30 25 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = "31 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"


def tree(tmp: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    (tmp / "proc/self").mkdir(parents=True)
    (tmp / "proc/self/cgroup").write_text(cgroup)
    (tmp / "proc/self/mountinfo").write_text(mountinfo)
    for name, text in files.items():
        path = tmp / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp


def test_v2_quota_of_the_cgroup_or_an_ancestor_the_tightest_wins(tmp_path):
    root = tree(tmp_path, "0::/kubepods/pod1/ctr\n", V2_MOUNT, {
        "/sys/fs/cgroup/kubepods/cpu.max": "max 100000\n",
        "/sys/fs/cgroup/kubepods/pod1/cpu.max": "250000 100000\n",
        "/sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "50000 100000\n",
    })
    assert cgroup_cpu_limit(root) == 0.5
    assert available_cpus(root) == 1


def test_v2_no_quota_means_the_affinity(tmp_path):
    root = tree(tmp_path, "0::/a\n", V2_MOUNT, {"/sys/fs/cgroup/a/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root) is None
    assert available_cpus(root) == len(os.sched_getaffinity(0))


def test_v1_cfs_quota_rounded_up(tmp_path):
    root = tree(tmp_path, "4:cpu,cpuacct:/kubepods.slice/x\n3:memory:/y\n", V1_MOUNT, {
        "/sys/fs/cgroup/cpu,cpuacct/kubepods.slice/x/cpu.cfs_quota_us": "150000\n",
        "/sys/fs/cgroup/cpu,cpuacct/kubepods.slice/x/cpu.cfs_period_us": "100000\n",
        "/sys/fs/cgroup/cpu,cpuacct/kubepods.slice/cpu.cfs_quota_us": "-1\n",
        "/sys/fs/cgroup/cpu,cpuacct/kubepods.slice/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_limit(root) == 1.5
    assert available_cpus(root) == min(2, len(os.sched_getaffinity(0)))


def test_a_container_sees_its_cgroup_as_the_mount_root(tmp_path):
    """Inside a container the v2 mount's root is the container's own cgroup."""
    mount = "30 25 0:27 /kubepods/pod1/ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    root = tree(tmp_path, "0::/kubepods/pod1/ctr\n", mount, {"/sys/fs/cgroup/cpu.max": "100000 100000\n"})
    assert cgroup_cpu_limit(root) == 1.0


@pytest.mark.parametrize("text", ["", "garbage", "10 0", "x y"])
def test_unreadable_files_count_as_no_limit(tmp_path, text):
    root = tree(tmp_path, "0::/a\n", V2_MOUNT + "garbage line\n", {"/sys/fs/cgroup/a/cpu.max": text})
    assert cgroup_cpu_limit(root) is None


def test_no_proc_at_all(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None and available_cpus(tmp_path) >= 1
