"""The netlink package's exception: pyroute2 errors are translated into it once, here."""

from __future__ import annotations

import errno as errno_codes
import os


class NetworkSetupError(OSError):
    """A netlink operation failed; the message names the object and the operation."""


def translate(exc: BaseException, what: str) -> NetworkSetupError:
    code = getattr(exc, "code", None) or getattr(exc, "errno", None) or errno_codes.EIO
    reason = os.strerror(code) if isinstance(code, int) and code > 0 else str(exc)
    return NetworkSetupError(code, f"{what}: {reason}")
