"""Datapath lifecycle against the real kernel: attachments as links, clean stop, leftovers of a
crashed or foreign run removed at start without duplicates, the cgroup lock, and the errors an
operator sees."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from agent.datapath import Datapath, DatapathError, cleanup_cgroup
from agent.datapath import libbpf, prerequisites, programs
from agent.datapath.layout import CompiledMap, Layout, check_layouts
from tests.integration.agent import kit
from tests.integration.agent.conftest import RedirectEnv, require_privileges

REPO = Path(__file__).resolve().parents[3]
OUR_NAMES = sorted(spec.name for spec in programs.PROGRAMS)

pytestmark = pytest.mark.privileged


def names_attached(path: str) -> list[str]:
    return sorted(a["name"] for a in kit.cgroup_attachments(path))


def foreign(cgroup: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.integration.agent.foreign_attach", cgroup, *args],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)


def foreign_ids(proc: subprocess.Popen) -> set[int]:
    line = proc.stdout.readline()
    assert line, f"foreign attach failed (exit {proc.poll()})"
    return set(map(int, line.split()))


@pytest.fixture
def cgroup(cgroups: kit.Cgroups) -> str:
    return cgroups.make(kit.new_id() + "lc")


def our_prog_ids(path: str) -> set[int]:
    return {a["id"] for a in kit.cgroup_attachments(path)}


def test_start_attaches_links_and_stop_removes_every_attachment(cgroup: str) -> None:
    dp = Datapath(cgroup)
    dp.start()
    try:
        assert sorted(dp.attached()) == OUR_NAMES
        attached = kit.cgroup_attachments(cgroup)
        assert sorted(a["name"] for a in attached) == OUR_NAMES
        assert {a["attach_flags"] for a in attached} == {"multi"}  # links coexist with other multi users
        # They are links: bpftool lists one cgroup link per program on this cgroup.
        links = [link for link in kit.bpftool_json("link", "show")
                 if link.get("type") == "cgroup" and link.get("cgroup_id") == os.stat(cgroup).st_ino]
        assert sorted(link["prog_id"] for link in links) == sorted(a["id"] for a in attached)
    finally:
        dp.stop()
    assert kit.cgroup_attachments(cgroup) == []
    assert dp.attached() == []
    dp.stop()  # idempotent
    with pytest.raises(DatapathError, match="not started"):
        dp.lookup("192.0.2.1", 1000)
    with pytest.raises(DatapathError, match="not started"):
        dp.reconcile({})


def test_a_killed_link_holder_leaves_nothing_behind(cgroup: str) -> None:
    holder = foreign(cgroup, "links")
    try:
        foreign_ids(holder)
        assert names_attached(cgroup) == OUR_NAMES
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert kit.cgroup_attachments(cgroup) == []


@pytest.mark.parametrize("flags", [0, libbpf.BPF_F_ALLOW_MULTI], ids=["legacy-exclusive", "legacy-multi"])
def test_start_removes_legacy_leftovers_of_a_crashed_run(cgroup: str, flags: int, redirect_env: RedirectEnv,
                                                         processes: kit.Processes) -> None:
    crashed = foreign(cgroup, "legacy", str(flags))
    stale_ids = foreign_ids(crashed)
    assert crashed.wait(timeout=30) == 0
    # The process is gone; its legacy attachments are not.
    assert names_attached(cgroup) == OUR_NAMES
    assert our_prog_ids(cgroup) == stale_ids

    dp = Datapath(cgroup)
    dp.start()
    try:
        attached = kit.cgroup_attachments(cgroup)
        assert Counter(a["name"] for a in attached) == Counter(OUR_NAMES)  # once each: no duplicates
        assert not our_prog_ids(cgroup) & stale_ids
        # And it works: a client in the cgroup is redirected exactly once, through our proxy.
        vip = (kit.random_vip(), 80)
        seen: list = []

        async def scenario() -> dict:
            async with kit.tcp_server(kit.echo_upstream) as upstream, \
                    kit.proxy_for(_env_on(redirect_env, dp), [vip], seen, upstream):
                return await kit.run_client(processes, mode="echo", to=vip, netns=redirect_env.net.netns,
                                            cgroup=cgroup, send="ok")

        report = asyncio.run(scenario())
        assert report["peer"] == list(vip) and report["reply"].endswith("|ok")
        assert len(seen) == 1 and seen[0][1] is not None
    finally:
        dp.stop()
    assert kit.cgroup_attachments(cgroup) == []


def _env_on(env: RedirectEnv, dp: Datapath) -> RedirectEnv:
    return RedirectEnv(env.name, env.net, dp.cgroup_path, dp.cgroup_path, dp.cgroup_path, dp)


def test_start_takes_over_links_of_a_foreign_live_process(cgroup: str) -> None:
    holder = foreign(cgroup, "links")
    try:
        foreign_live = foreign_ids(holder)
        dp = Datapath(cgroup)
        dp.start()
        try:
            assert Counter(names_attached(cgroup)) == Counter(OUR_NAMES)
            assert not our_prog_ids(cgroup) & foreign_live
            assert holder.poll() is None  # the holder lives on; its links were detached
        finally:
            dp.stop()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert kit.cgroup_attachments(cgroup) == []


def test_a_second_live_datapath_on_the_same_cgroup_is_refused(cgroup: str) -> None:
    first = Datapath(cgroup)
    first.start()
    try:
        second = Datapath(cgroup, owner="second-agent")
        with pytest.raises(DatapathError, match=rf"already managed by a live datapath \(process {os.getpid()}"):
            second.start()
        assert sorted(first.attached()) == OUR_NAMES
        assert names_attached(cgroup) == OUR_NAMES  # untouched by the refused one
    finally:
        first.stop()
    # Once the first one stopped, the lock is free.
    second.start()
    second.stop()


def test_cleanup_cgroup_detaches_all_of_ours(cgroup: str) -> None:
    crashed = foreign(cgroup, "legacy", str(libbpf.BPF_F_ALLOW_MULTI))
    foreign_ids(crashed)
    assert crashed.wait(timeout=30) == 0
    removed = cleanup_cgroup(cgroup)
    assert len(removed) == len(programs.PROGRAMS) and all("legacy attach" in r for r in removed)
    assert kit.cgroup_attachments(cgroup) == []
    assert cleanup_cgroup(cgroup) == []


def test_a_layout_mismatch_fails_start_clearly(cgroup: str, tmp_path: Path) -> None:
    bpf_dir = tmp_path / "bpf"
    shutil.copytree(programs.default_bpf_dir(), bpf_dir)
    header = bpf_dir / programs.HEADER
    original = "struct cl_addr {\n    __u32 ip;    /* network byte order */\n    __u16 port;  /* network byte order */\n"
    swapped = "struct cl_addr {\n    __u16 port;\n    __u8 proto;\n    __u8 pad;\n    __u32 ip;\n"
    text = header.read_text()
    assert original in text
    tail = "    __u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */\n    __u8 pad;    /* zero */\n};"
    assert tail in text
    header.write_text(text.replace(original, swapped).replace(tail, "};", 1))
    dp = Datapath(cgroup, bpf_dir=bpf_dir)
    with pytest.raises(DatapathError, match=r"map cl_services key: C has 8 bytes \{port@0:2, proto@2:1, pad@3:1, ip@4:4\}, "
                                            r"Python mirror has 8 bytes \{ip@0:4, port@4:2, proto@6:1, pad@7:1\}"):
        dp.start()
    assert kit.cgroup_attachments(cgroup) == []
    dp.stop()


def test_check_layouts_reports_size_and_missing_maps() -> None:
    good = {"cl_services": CompiledMap("cl_services", Layout(8, ()), Layout(8, ()), 8, 8)}
    problems = check_layouts(good)
    assert "map cl_cookie_orig is missing from the compiled programs" in problems
    assert any("map cl_services key: C has 8-byte scalar" in p for p in problems)


def test_missing_cgroup_path_is_a_clear_error(tmp_path: Path) -> None:
    require_privileges()
    with pytest.raises(DatapathError, match=r"cgroup path /sys/fs/cgroup/unified/cl-none does not exist: .*"
                                            r"cgroup v2 is mounted at /sys/fs/cgroup/unified"):
        Datapath("/sys/fs/cgroup/unified/cl-none")


def test_a_path_that_is_not_cgroup2_is_a_clear_error(tmp_path: Path) -> None:
    require_privileges()
    with pytest.raises(DatapathError, match=r"is not in a cgroup v2 hierarchy \(it is on a \w+ mount at /"):
        Datapath(str(tmp_path))
    v1 = next((m for m in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu") if os.path.isdir(m)), None)
    if v1 is not None:  # this machine is hybrid: cgroup v1 controllers next to the v2 mount
        with pytest.raises(DatapathError, match=rf"{v1} is not in a cgroup v2 hierarchy \(it is on a cgroup mount"):
            Datapath(v1)
    with pytest.raises(DatapathError, match="is not a directory"):
        Datapath(os.path.join(kit.CGROUP2, "cgroup.procs"))


def test_missing_kernel_headers_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatapathError, match=rf"kernel headers missing: {tmp_path}/9.9.9-test/build does not exist"):
        prerequisites.check_kernel_headers("9.9.9-test", str(tmp_path))
    (tmp_path / "9.9.9-test").mkdir()
    (tmp_path / "9.9.9-test" / "build").symlink_to(tmp_path / "gone")
    with pytest.raises(DatapathError, match="build is a dangling symlink"):
        prerequisites.check_kernel_headers("9.9.9-test", str(tmp_path))


START_IN_SUBPROCESS = """
import sys
{setup}
from agent.datapath import Datapath, DatapathError
try:
    Datapath(sys.argv[1]).start()
except DatapathError as exc:
    print(exc)
else:
    print("started")
"""


def run_start(cgroup: str, setup: str = "", prefix: tuple[str, ...] = ()) -> str:
    out = subprocess.run([*prefix, sys.executable, "-c", START_IN_SUBPROCESS.format(setup=setup), cgroup],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_not_root_is_a_clear_error(cgroup: str) -> None:
    # Root without the capabilities that make root root for BPF (the venv's interpreter is not
    # executable by other users on this machine, so dropping the uid is not an option).
    message = run_start(cgroup, prefix=("setpriv", "--bounding-set=-sys_admin,-bpf,-net_admin", "--"))
    assert message.startswith("not root: the datapath loads and attaches BPF programs")
    assert "CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN" in message
    assert kit.cgroup_attachments(cgroup) == []
