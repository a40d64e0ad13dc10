"""Logging set-up shared by the control plane, gateway and agent processes.

Text on a terminal, one JSON object per line otherwise (what log collectors in a cluster expect).

Every JSON line has `ts`, `level`, `component` (controlplane, agent, gateway, gateway[N] for a
worker), `logger` and `msg`. Lines about a connection, an Import, an Export or a peer also carry
structured fields, passed as `extra=fields(...)`: always under the same names (`FIELD_NAMES`), as
top-level keys of the JSON object and as `key=value` after the message in text, so that a log
query can select on them without parsing messages.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

# The structured fields a line may carry, and what each holds.
FIELD_NAMES = {
    "conn": "connection id (unique per gateway process; the access log's lines carry it too)",
    "direction": "egress (from local clients) or ingress (from remote peers)",
    "import": "the Import (namespace/name) a connection is for",
    "export": "the Export (namespace/name) a connection is for",
    "peer": "the remote peer",
    "verdict": "allow or deny (policy decisions)",
    "policy": "the policy that decided",
    "client": "the client's attributes (key=value, ...)",
    "result": "how a connection ended (ok, reset, denied, unreachable, ...); up or down for a peer",
    "reason": "what showed a peer up or down (connect, probe, heartbeat)",
    "kind": "the kind of object a line is about (Import, Export, Peer, AccessPolicy, ...)",
    "object": "that object (namespace/name, or name)",
}
_FIELDS_ATTR = "cl_fields"


def fields(**values: Any) -> dict[str, dict[str, Any]]:
    """`extra=` for a log call: structured fields (names from FIELD_NAMES; `import_` for import).
    Empty values are left out."""
    return {_FIELDS_ATTR: {k.rstrip("_"): v for k, v in values.items() if v not in (None, "")}}


def printable(text: str) -> str:
    """`text` with every unprintable character (a newline, an escape: a remote peer may send them)
    as `?`, so that one log line stays one line and a terminal shows it as it is."""
    return "".join(c if c.isprintable() else "?" for c in text)


def record_fields(record: logging.LogRecord) -> Mapping[str, Any]:
    """The structured fields of a record ({} when it has none)."""
    return getattr(record, _FIELDS_ATTR, None) or {}


class JSONFormatter(logging.Formatter):
    def __init__(self, component: str = "") -> None:
        super().__init__()
        self._component = component

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": self._component,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            doc.setdefault(key, value)  # never over the fixed keys
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    """`time component LEVEL logger: message key=value ...` (values with spaces quoted)."""

    def __init__(self, component: str = "") -> None:
        prefix = f"{component} " if component else ""
        super().__init__(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extra = record_fields(record)
        if not extra:
            return text
        return text + " " + " ".join(f"{k}={_text_value(v)}" for k, v in extra.items())


def _text_value(value: Any) -> str:
    if isinstance(value, Mapping):
        value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    text = printable(str(value))
    return json.dumps(text) if (not text or any(c.isspace() or c == '"' for c in text)) else text


def setup_logging(level: str = "info", fmt: str = "auto", *, component: str = "") -> None:
    """Configure the root logger once. fmt: text | json | auto (text on a TTY)."""
    if fmt not in ("auto", "text", "json"):
        raise ValueError(f"log format must be text, json or auto, not {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r} (debug, info, warning, error)")
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter(component) if fmt == "json" else TextFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # grpc's and asyncio's debug chatter is not ours
    logging.getLogger("asyncio").setLevel(max(numeric, logging.WARNING))
