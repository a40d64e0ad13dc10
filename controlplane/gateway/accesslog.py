"""The access log (`--access-log on`): one line per connection, written when it ends.

The lines go to the logger `clusterlink.access` at info level (so they reach the same stream as
the other logs, in the same format, and a collector can route them by `logger`), whatever
--log-level says. Each carries the structured fields of `logsetup.FIELD_NAMES` that apply, plus:

- `bytes_to_service`, `bytes_to_client`: application bytes relayed each way;
- `duration_ms`: from accept (egress) or the CONNECT request (ingress) to the end;
- `setup_ms`: from the same start to the relay starting (empty when the connection never got
  that far: denied, no source reachable).

A connection that never reached a peer (refused by policy, no source) gets a line too, with its
result. Off, the log costs nothing per connection: no id is made, nothing is formatted.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Mapping

from controlplane.api.logsetup import fields

from .logthrottle import attributes

LOGGER_NAME = "clusterlink.access"


class AccessLog:
    def __init__(self, enabled: bool, *, logger: logging.Logger | None = None) -> None:
        self.enabled = enabled
        self._log = logger or logging.getLogger(LOGGER_NAME)
        if enabled:
            self._log.setLevel(logging.INFO)  # not subject to --log-level: asked for explicitly
        # Connection ids: a random prefix per process (workers restart) and a counter.
        self._prefix = secrets.token_hex(3)
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        """An id for a connection starting now ("" when the log is off)."""
        return f"{self._prefix}-{next(self._ids):x}" if self.enabled else ""

    def write(self, *, conn: str, direction: str, service_kind: str, service: str, peer: str,
              client: Mapping[str, str] | None, result: str, started: float, setup: float | None = None,
              to_service: int = 0, to_client: int = 0, now: float | None = None) -> None:
        """One line for a finished connection. `service_kind`: "import" or "export"; `started`,
        `setup`: time.monotonic() values (setup: when the relay started)."""
        if not self.enabled:
            return
        now = time.monotonic() if now is None else now
        duration_ms = round((now - started) * 1000, 3)
        setup_ms = round((setup - started) * 1000, 3) if setup is not None else ""
        who = attributes(client) if client is not None else "unknown"
        # setup_ms stays in the line (empty) when there was no relay: every line has every field.
        self._log.info("connection %s", result, extra=fields(
            conn=conn, direction=direction, **{service_kind: service}, peer=peer or "-", client=who, result=result,
            bytes_to_service=to_service, bytes_to_client=to_client, duration_ms=duration_ms,
            setup_ms=setup_ms if setup_ms != "" else "-"))
