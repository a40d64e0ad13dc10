"""The gateway's start-up line about connect()'s port search, from a copy of /proc/sys and from the
real one of a fresh network namespace."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane.gateway.ports import connect_limits, log_connect_limits


def sysctls(tmp: Path, port_range: str | None, tw_reuse: str | None) -> Path:
    d = tmp / "proc/sys/net/ipv4"
    d.mkdir(parents=True)
    if port_range is not None:
        (d / "ip_local_port_range").write_text(port_range)
    if tw_reuse is not None:
        (d / "tcp_tw_reuse").write_text(tw_reuse)
    return tmp


def test_kernel_defaults_name_the_rate_where_connect_slows_down(tmp_path):
    limits = connect_limits(sysctls(tmp_path, "32768\t60999\n", "2\n"))
    assert (limits.low, limits.high, limits.tw_reuse) == (32768, 60999, 2)
    assert limits.rate == 235  # 28232 ports, half of them, 60 s of TIME_WAIT
    text = limits.describe()
    assert "32768-60999" in text and "tcp_tw_reuse=2" in text and "about 235 new connections/s" in text
    assert "gateway.sysctls" in text


def test_a_wider_range_raises_the_rate_and_reuse_removes_the_limit(tmp_path):
    assert connect_limits(sysctls(tmp_path / "a", "1024 65535", "0")).rate == 537
    text = connect_limits(sysctls(tmp_path / "b", "32768 60999", "1")).describe()
    assert "tcp_tw_reuse=1" in text and "connections/s" not in text


@pytest.mark.parametrize("port_range", [None, "", "banana 3", "40000 30000", "0 100", "1 2 3", "1024 70000"])
def test_an_unreadable_port_range_is_none(tmp_path, port_range):
    assert connect_limits(sysctls(tmp_path, port_range, "1")) is None


def test_an_unreadable_tw_reuse_is_said_so(tmp_path):
    limits = connect_limits(sysctls(tmp_path, "32768 60999", None))
    assert limits.tw_reuse is None and "tcp_tw_reuse unreadable" in limits.describe()


def test_the_log_line(tmp_path, caplog):
    log = logging.getLogger("cltest.ports")
    with caplog.at_level(logging.INFO, logger="cltest.ports"):
        log_connect_limits(log, sysctls(tmp_path / "a", "32768 60999", "2"))
        log_connect_limits(log, sysctls(tmp_path / "b", None, None))
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]
    assert "about 235" in caplog.records[0].getMessage()
    assert "cannot read net.ipv4.ip_local_port_range" in caplog.records[1].getMessage()


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root")
def test_the_real_proc_of_a_fresh_netns():
    """unshare(1) gives the child its own netns, where the sysctls are its own and writable."""
    probe = ("import pathlib; pathlib.Path('/proc/sys/net/ipv4/tcp_tw_reuse').write_text('1');"
             "pathlib.Path('/proc/sys/net/ipv4/ip_local_port_range').write_text('20000 29999');"
             "from controlplane.gateway.ports import connect_limits; l = connect_limits();"
             "print(l.low, l.high, l.tw_reuse, l.rate)")
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=30, check=True, cwd=Path(__file__).resolve().parents[3]).stdout
    assert out.split() == ["20000", "29999", "1", "83"]


def test_a_dual_stack_listen_address_binds_both_families() -> None:
    from controlplane.gateway.listeners import bind_hosts

    assert bind_hosts("::") == ["0.0.0.0", "::"]
    assert bind_hosts("0.0.0.0") == "0.0.0.0"
    assert bind_hosts("fdc1:200::1") == "fdc1:200::1"
