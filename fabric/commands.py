"""Running the machine's own tools (ip, sysctl, nsenter, bpftool): bounded in time, errors name the command."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence

DEFAULT_TIMEOUT = 10.0


class CommandError(RuntimeError):
    """A tool exited non-zero, timed out or could not be started."""

    def __init__(self, argv: Sequence[str], detail: str, returncode: int | None = None) -> None:
        self.argv = list(argv)
        self.detail = detail
        self.returncode = returncode
        status = "timed out" if returncode is None else f"exited {returncode}"
        super().__init__(f"`{shlex.join(self.argv)}` {status}: {detail}")


def command(argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT, input: str | None = None) -> str:
    """Run `argv` to completion and return its stdout; raise CommandError otherwise."""
    argv = [str(a) for a in argv]
    try:
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, errors="replace", timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, f"no answer within {timeout:g}s") from exc
    except FileNotFoundError as exc:
        raise CommandError(argv, f"{argv[0]} is not installed", 127) from exc
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or "no output"
        raise CommandError(argv, detail, result.returncode)
    return result.stdout
