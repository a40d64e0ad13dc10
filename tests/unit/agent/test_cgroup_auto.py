"""--cgroup auto: the kubelet's pods cgroup under the cgroup v2 mount, for either cgroup driver."""

from __future__ import annotations

import pytest

from agent.datapath.cgroups import Mount, resolve_cgroup
from agent.datapath.errors import DatapathError


def v2(path) -> list[Mount]:  # type: ignore[no-untyped-def]
    return [Mount(mount_point="/proc", fstype="proc"), Mount(mount_point=str(path), fstype="cgroup2")]


def test_a_path_is_taken_as_it_is(tmp_path):
    assert resolve_cgroup("/sys/fs/cgroup/x", v2(tmp_path)) == "/sys/fs/cgroup/x"


@pytest.mark.parametrize("made, found", [(["kubepods.slice"], "kubepods.slice"), (["kubepods"], "kubepods"),
                                         (["kubepods", "kubepods.slice"], "kubepods.slice")])
def test_auto_finds_the_systemd_or_the_cgroupfs_layout(tmp_path, made, found):
    for name in made:
        (tmp_path / name).mkdir()
    assert resolve_cgroup("auto", v2(tmp_path)) == str(tmp_path / found)


def test_auto_without_a_kubelet_cgroup_says_what_it_tried(tmp_path):
    with pytest.raises(DatapathError, match="no kubelet pods cgroup found .*kubepods.slice.*pass --cgroup"):
        resolve_cgroup("auto", v2(tmp_path))
    with pytest.raises(DatapathError, match="no cgroup v2 hierarchy is mounted"):
        resolve_cgroup("auto", [Mount(mount_point="/sys/fs/cgroup/cpu", fstype="cgroup")])
