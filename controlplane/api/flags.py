"""Command-line flags that also read `CLUSTERLINK_<FLAG>` environment variables.

Every process parses its flags once into a frozen config dataclass; this module only makes each
flag's environment fallback explicit and visible in --help.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def env_name(flag: str) -> str:
    return "CLUSTERLINK_" + flag.lstrip("-").upper().replace("-", "_")


def add(parser: argparse.ArgumentParser, flag: str, *, help: str, default: Any = None, **kwargs: Any) -> None:
    """Add `--flag`, defaulting to $CLUSTERLINK_FLAG, then to `default`; --help shows both."""
    env = env_name(flag)
    value = os.environ.get(env)
    if value is not None and kwargs.get("action") == "append":
        items = [v.strip() for v in value.split(",") if v.strip()]
        convert = kwargs.get("type") or str
        try:
            value = [convert(v) for v in items]
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"${env}={os.environ[env]!r} is invalid: {exc}")
    elif value is not None and kwargs.get("type") is not None:
        try:
            value = kwargs["type"](value)
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"${env}={os.environ[env]!r} is invalid: {exc}")
    shown = f" (env {env}; default: {default})" if default not in (None, "", []) else f" (env {env})"
    parser.add_argument(flag, default=value if value is not None else default, help=help + shown, **kwargs)


def host_port(value: str) -> tuple[str, int]:
    """Parse 'host:port' (IPv6 as [::1]:443)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not host:port")
    return host.strip("[]") or "0.0.0.0", int(port)


def label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{value!r} is not key=value")
    return key, val
