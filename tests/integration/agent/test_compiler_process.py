"""The compiler process: BCC runs in a short-lived child that hands program and map fds to the
agent. The fds arrive and carry a redirect end to end; the agent never imports bcc nor maps libbcc
or LLVM; every failure in the child (compile error, no kernel headers, no BCC, a crash, a hang)
comes back as a clear DatapathError with the child's output in the log; the child is always
reaped, and one that hangs is killed after the bound. Also the handoff record format itself."""

from __future__ import annotations

import ast
import asyncio
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.datapath import Datapath, DatapathError, handoff, programs
from tests.integration.agent import kit
from tests.integration.agent.conftest import RedirectEnv

REPO = Path(__file__).resolve().parents[3]
OUR_NAMES = sorted(spec.name for spec in programs.PROGRAMS)
STARTED = re.compile(r"BPF compiler process \(pid (\d+)\) started")

privileged = pytest.mark.privileged


@pytest.fixture
def cgroup(cgroups: kit.Cgroups) -> str:
    return cgroups.make(kit.new_id() + "cc")


@pytest.fixture
def bpf_copy(tmp_path: Path) -> Path:
    target = tmp_path / "bpf"
    shutil.copytree(programs.default_bpf_dir(), target)
    return target


def children(pid: int) -> dict[int, str]:
    """pid -> state letter of every process whose parent is pid (zombies included)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        if int(fields[1]) == pid:
            found[int(entry)] = fields[0]
    return found


def compiler_pids(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [int(m.group(1)) for r in caplog.records if (m := STARTED.search(r.getMessage()))]


def assert_reaped(pid: int) -> None:
    # A zombie keeps /proc/<pid> until it is reaped.
    assert not os.path.exists(f"/proc/{pid}"), f"compiler process {pid} is still there: {children(os.getpid())}"


def compiler_output(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if "its output:" in r.getMessage())


# -- success: the fds arrive and work --------------------------------------------------------------

@privileged
def test_handed_over_fds_carry_a_redirect_end_to_end(cgroup: str, redirect_env: RedirectEnv,
                                                     processes: kit.Processes,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.datapath")
    before = children(os.getpid())
    dp = Datapath(cgroup)
    dp.start()
    try:
        (pid,) = compiler_pids(caplog)
        assert_reaped(pid)
        # The same children as before (their states may change: other tests' helpers run).
        assert children(os.getpid()).keys() == before.keys()
        # What the kernel has attached is exactly the programs whose fds we received.
        attached = kit.cgroup_attachments(cgroup)
        assert sorted(a["name"] for a in attached) == OUR_NAMES
        held = {dp._lib.prog_info(fd).id for fd in dp._programs.prog_fds.values()}  # noqa: SLF001
        assert {a["id"] for a in attached} == held
        # Received fds are close-on-exec, like the ones bpf(2) creates: no subprocess inherits them.
        for fd in dp._programs.fds():  # noqa: SLF001
            assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, fd
        # And the maps work: a client in the cgroup is redirected through our proxy.
        vip = (kit.random_vip(), 80)
        seen: list = []
        env = RedirectEnv(redirect_env.name, redirect_env.net, cgroup, cgroup, cgroup, dp)

        async def scenario() -> dict:
            async with kit.tcp_server(kit.echo_upstream) as upstream, kit.proxy_for(env, [vip], seen, upstream):
                return await kit.run_client(processes, mode="echo", to=vip, netns=env.net.netns, cgroup=cgroup,
                                            send="via handed-over fds")

        report = asyncio.run(scenario())
        assert report["peer"] == list(vip)
        assert report["reply"].endswith("|via handed-over fds")
        assert len(seen) == 1 and seen[0][1].orig_port == 80
        ids = dp.map_ids()
        assert sorted(ids) == ["cl_cookie_orig", "cl_cookie_orig6", "cl_services", "cl_services6", "cl_tuple_orig",
                               "cl_tuple_orig6", "cl_udp_relays", "cl_udp_relays6"]
    finally:
        dp.stop()
    assert kit.cgroup_attachments(cgroup) == []


NO_BCC_IN_THE_AGENT = """
import json, os, sys
from agent.datapath import Datapath
dp = Datapath(sys.argv[1])
dp.start()
maps = open("/proc/self/maps").read()
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({
    "bcc_modules": sorted(m for m in sys.modules if m == "bcc" or m.startswith("bcc.")),
    "mapped": sorted({line.split()[-1] for line in maps.splitlines()
                      if any(s in line for s in ("libbcc", "LLVM", "clang"))}),
    "attached": sorted(dp.attached()),
    "vmrss_kb": int(status["VmRSS"].split()[0]),
    "children": [p for p in os.listdir("/proc") if p.isdigit() and
                 open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid())],
}))
dp.stop()
"""


@privileged
def test_the_agent_process_never_imports_bcc_nor_maps_llvm(cgroup: str) -> None:
    out = subprocess.run([sys.executable, "-c", NO_BCC_IN_THE_AGENT, cgroup], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["attached"] == OUR_NAMES
    assert report["bcc_modules"] == []
    assert report["mapped"] == []
    assert report["children"] == []
    assert report["vmrss_kb"] < 40 * 1024  # with BCC in the process it was over 150 MB


def test_only_the_compilers_loader_imports_bcc() -> None:
    importers = []
    for package in ("agent", "controlplane", "fabric", "bench"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                if any(n == "bcc" or n.startswith("bcc.") for n in names):
                    importers.append(str(path.relative_to(REPO)))
    assert sorted(set(importers)) == ["agent/datapath/loader.py"]


# -- failures in the child come back as clear errors -----------------------------------------------

@privileged
def test_a_compile_error_is_a_clear_error_with_the_compiler_output_logged(
        cgroup: str, bpf_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.datapath")
    source = bpf_copy / "connect4.c"
    source.write_text(source.read_text() + "\nint cl_broken(void) { return no_such_identifier; }\n")
    before = children(os.getpid())
    dp = Datapath(cgroup, bpf_dir=bpf_copy)
    with pytest.raises(DatapathError, match=rf"BCC could not compile {bpf_copy}/\*\.c .*kernel headers"):
        dp.start()
    (pid,) = compiler_pids(caplog)
    assert_reaped(pid)
    assert children(os.getpid()).keys() == before.keys()
    # The compiler's own message, with file and line, is in the agent's log.
    output = compiler_output(caplog)
    assert f"{source}:" in output and "no_such_identifier" in output
    assert any(r.levelno == logging.ERROR for r in caplog.records if "its output:" in r.getMessage())
    assert kit.cgroup_attachments(cgroup) == []
    dp.stop()
    # Nothing was left locked or attached: the real programs start fine afterwards.
    good = Datapath(cgroup)
    good.start()
    assert sorted(good.attached()) == OUR_NAMES
    good.stop()


START_IN_SUBPROCESS = """
import logging, sys
logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
from agent.datapath import Datapath, DatapathError
try:
    Datapath(sys.argv[1]).start()
except DatapathError as exc:
    print(exc)
else:
    print("started")
"""


def run_start(cgroup: str, *, prefix: tuple[str, ...] = (), env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*prefix, sys.executable, "-c", START_IN_SUBPROCESS, cgroup], cwd=REPO,
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    return out


@privileged
def test_missing_kernel_headers_in_the_child_are_a_clear_error(cgroup: str) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    # A private mount namespace where /lib/modules is empty: the compiler process finds no headers.
    script = 'mount -t tmpfs clnoheaders /lib/modules && exec "$@"'
    out = run_start(cgroup, prefix=("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"))
    release = os.uname().release
    assert out.stdout.strip().startswith(f"kernel headers missing: /lib/modules/{release}/build does not exist")
    assert "run make install" in out.stdout
    assert kit.cgroup_attachments(cgroup) == []


@privileged
def test_missing_bcc_in_the_child_is_a_clear_error(cgroup: str, tmp_path: Path) -> None:
    # A bcc package that fails to import shadows the real one, as if python3-bpfcc were not installed.
    stub = tmp_path / "nobcc" / "bcc"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ImportError("No module named \'bcc\' (simulated by the test)")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "nobcc"), str(REPO)]))
    out = run_start(cgroup, env=env)
    message = out.stdout.strip()
    assert message.startswith("BCC is not importable from this Python (No module named 'bcc' (simulated")
    assert "install python3-bpfcc: run make install" in message
    assert "Traceback" not in out.stderr  # a reported failure, not a crash
    assert kit.cgroup_attachments(cgroup) == []


@privileged
def test_a_hung_child_is_killed_after_the_bound_and_reaped(cgroup: str, bpf_copy: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.datapath")
    # A source file that never delivers (a FIFO with no writer, like a stuck network mount).
    source = bpf_copy / "connect4.c"
    source.unlink()
    os.mkfifo(source)
    dp = Datapath(cgroup, bpf_dir=bpf_copy, compile_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(DatapathError, match=r"BPF compiler process \(pid \d+\) did not finish within 2 s "
                                            r"and was killed"):
        dp.start()
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 10.0
    (pid,) = compiler_pids(caplog)
    assert_reaped(pid)
    assert kit.cgroup_attachments(cgroup) == []
    dp.stop()


@privileged
def test_a_child_that_dies_without_answering_is_a_clear_error(cgroup: str, bpf_copy: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.datapath")
    source = bpf_copy / "connect4.c"
    source.unlink()
    os.mkfifo(source)  # holds the child while we kill it
    dp = Datapath(cgroup, bpf_dir=bpf_copy, compile_timeout=60.0)
    result: list[BaseException | None] = []

    def start() -> None:
        try:
            dp.start()
        except BaseException as exc:  # handed to the test thread, which asserts on it
            result.append(exc)
        else:
            result.append(None)

    thread = threading.Thread(target=start, name="datapath-start")
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not compiler_pids(caplog) and time.monotonic() < deadline:
            time.sleep(0.02)
        (pid,) = compiler_pids(caplog)
        os.kill(pid, signal.SIGKILL)
    finally:
        thread.join(30)
    assert not thread.is_alive()
    (error,) = result
    assert isinstance(error, DatapathError)
    assert re.search(rf"the BPF compiler process \(pid {pid}\) ended with signal SIGKILL without handing over "
                     r"the programs", str(error)), str(error)
    assert_reaped(pid)
    assert kit.cgroup_attachments(cgroup) == []
    dp.stop()


HOLD_IN_START = """
import sys
from agent.datapath import Datapath
Datapath(sys.argv[1], bpf_dir=sys.argv[2], compile_timeout=120).start()
"""


def process_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


@privileged
def test_the_child_dies_with_a_killed_agent(cgroup: str, bpf_copy: Path, processes: kit.Processes) -> None:
    source = bpf_copy / "connect4.c"
    source.unlink()
    os.mkfifo(source)  # holds the child in its compile
    agent = subprocess.Popen([sys.executable, "-c", HOLD_IN_START, cgroup, str(bpf_copy)], cwd=REPO)
    processes.register(agent.pid)
    try:
        deadline = time.monotonic() + 20
        while not (kids := children(agent.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        (child,) = kids
        processes.register(child)
        agent.kill()
        agent.wait()
        deadline = time.monotonic() + 10
        while process_state(child) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process_state(child) in (None, "Z"), f"compiler process {child} outlived its agent"
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert kit.cgroup_attachments(cgroup) == []


@privileged
def test_a_layout_mismatch_found_by_the_child_names_both_layouts(cgroup: str, bpf_copy: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.datapath")
    header = bpf_copy / programs.HEADER
    text = header.read_text()
    field = "    __u64 cgroup_id;   /* cgroup v2 id"
    grown = text.replace(field, "    __u64 extra;\n" + field)
    assert grown != text
    header.write_text(grown.replace('sizeof(struct cl_orig) == 16', 'sizeof(struct cl_orig) == 24'))
    dp = Datapath(cgroup, bpf_dir=bpf_copy)
    with pytest.raises(DatapathError, match=r"map cl_cookie_orig value: C has 24 bytes \{ip@0:4, port@4:2, proto@6:1, pad@7:1, "
                                            r"extra@8:8, cgroup_id@16:8\}, Python mirror has 16 bytes"):
        dp.start()
    (pid,) = compiler_pids(caplog)
    assert_reaped(pid)
    assert kit.cgroup_attachments(cgroup) == []
    dp.stop()


def test_a_bad_compile_timeout_is_refused_at_construction(tmp_path: Path) -> None:
    if kit.skip_reason_privileged() is not None:
        pytest.skip(kit.skip_reason_privileged())
    with pytest.raises(DatapathError, match="compile_timeout must be a positive number of seconds"):
        Datapath(kit.CGROUP2, compile_timeout=0)


# -- the handoff record ----------------------------------------------------------------------------

@pytest.mark.parametrize(("payload", "nfds", "message"), [
    (b"not json", 0, "malformed answer"),
    (b'{"v": 2, "ok": true, "programs": [], "maps": []}', 0, "unknown version"),
    (b'{"v": 1, "ok": true, "programs": ["a"], "maps": ["m"]}', 1, "named 1 programs and 1 maps .* sent 1 fds"),
    (b'{"v": 1, "ok": true, "programs": ["a", "a"], "maps": []}', 2, "some twice"),
    (b'{"v": 1, "ok": true, "programs": "a", "maps": []}', 0, "malformed answer"),
    (b'{"v": 1, "ok": false, "error": "no headers"}', 1, "sent 1 fds with a failure"),
    (b'{"v": 1, "ok": false, "error": "kernel headers missing: x"}', 0, "^kernel headers missing: x$"),
    (b'{"v": 1, "ok": false}', 0, "the compiler process failed"),
], ids=["garbage", "version", "count", "duplicate", "types", "fds-with-failure", "failure", "failure-no-text"])
def test_decode_refuses_what_it_cannot_trust(payload: bytes, nfds: int, message: str) -> None:
    with pytest.raises(DatapathError, match=message):
        handoff.decode(payload, list(range(100, 100 + nfds)))


def test_decode_pairs_names_with_fds_in_order() -> None:
    payload, fds = handoff.encode_objects({"p1": 10, "p2": 11}, {"m1": 12})
    assert fds == [10, 11, 12]
    objects = handoff.decode(payload, fds)
    assert objects.prog_fds == {"p1": 10, "p2": 11} and objects.map_fds == {"m1": 12}


def test_a_long_failure_message_still_fits_one_record() -> None:
    payload = handoff.encode_failure("x" * (2 * handoff.MAX_MESSAGE))
    assert len(payload) < handoff.MAX_MESSAGE
    with pytest.raises(DatapathError, match=r"^x+ \[\.\.\.\]$"):
        handoff.decode(payload, [])


def _some_fds(n: int) -> list[int]:
    """Stand-ins for BPF fds: what SCM_RIGHTS carries is any open file."""
    return [os.eventfd(0) for _ in range(n)]


def test_fds_cross_the_socket_close_on_exec_and_the_sender_may_exit_first() -> None:
    ours, theirs = handoff.socketpair()
    sent = _some_fds(3)
    try:
        with ours:
            handoff.send_objects(theirs, {"p": sent[0]}, {"m1": sent[1], "m2": sent[2]})
            theirs.close()  # the sender is gone before the receiver reads: the record survives
            objects = handoff.receive(ours)
            assert objects is not None
            assert list(objects.prog_fds) == ["p"] and list(objects.map_fds) == ["m1", "m2"]
            for got, orig in zip(objects.fds(), sent):
                assert got not in sent
                assert os.fstat(got).st_ino == os.fstat(orig).st_ino  # the same open files
                assert fcntl.fcntl(got, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
            objects.close()
            objects.close()  # idempotent
            assert handoff.receive(ours) is None  # end of stream after the one record
    finally:
        for fd in sent:
            os.close(fd)


def test_too_many_fds_are_refused_and_closed() -> None:
    ours, theirs = handoff.socketpair()
    sent = _some_fds(handoff.MAX_FDS + 2)
    before = kit.open_fds()
    try:
        with ours, theirs:
            handoff.send_objects(theirs, {f"p{i}": fd for i, fd in enumerate(sent)}, {})
            with pytest.raises(DatapathError, match="truncated"):
                handoff.receive(ours)
            assert kit.open_fds() == before  # whatever arrived was closed
    finally:
        for fd in sent:
            os.close(fd)


def test_receive_without_an_answer_from_a_live_sender_is_none() -> None:
    ours, theirs = handoff.socketpair()
    with ours, theirs:
        assert handoff.receive(ours) is None
        assert isinstance(ours, socket.socket)
