"""The machine and software a run measured: cores, CPU model, kernel, memory, Python and OpenSSL,
HAProxy and iperf3 versions, and the project's version and commit."""

from __future__ import annotations

import os
import platform
import re
import ssl
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _mem_total_gb() -> float:
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    raise RuntimeError("/proc/meminfo has no MemTotal")


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
    return out.stdout.strip() if out.returncode == 0 else ""


def _iperf3_version() -> str:
    out = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, timeout=10)
    match = re.match(r"iperf (\S+)", out.stdout)
    return match.group(1) if match else out.stdout.splitlines()[0] if out.stdout else ""


def _sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return ""


def project_version() -> dict[str, object]:
    from controlplane.api.buildinfo import VERSION as version  # noqa: PLC0415 - pyproject.toml reads it there
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {"version": version, "git_commit": _git("rev-parse", "HEAD"), "git_describe": _git("describe", "--always"),
            "git_dirty": bool(dirty)}


def describe(haproxy: dict[str, str] | None) -> dict[str, object]:
    """Everything but HAProxy is read here; `haproxy` comes from `bench.haproxy.version()` (None: not used)."""
    return {"cores": os.cpu_count(), "cpu_model": _cpu_model(), "kernel": platform.release(),
            "mem_total_gb": _mem_total_gb(), "python": platform.python_version(),
            "python_openssl": ssl.OPENSSL_VERSION, "haproxy": haproxy or {}, "iperf3": _iperf3_version(),
            "project": project_version(), "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "tcp_tw_reuse": _sysctl("net.ipv4.tcp_tw_reuse")}
