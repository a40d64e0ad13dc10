"""Status conditions (metav1.Condition): read, and set only when something changed.

`set_condition` keeps lastTransitionTime when the status did not flip, so writers can compare the
result with the old status and skip the write when nothing changed.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any


def now_rfc3339() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_condition(status: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in status.get("conditions", ()) or ():
        if cond.get("type") == type_:
            return dict(cond)
    return None


def is_true(status: Mapping[str, Any], type_: str) -> bool:
    cond = get_condition(status, type_)
    return bool(cond and cond.get("status") == "True")


def set_condition(status: Mapping[str, Any], type_: str, ok: bool | None, reason: str, message: str = "",
                  *, generation: int = 0, now: str | None = None) -> dict[str, Any]:
    """Return a copy of `status` with the condition set (True/False/Unknown for ok=None)."""
    value = "Unknown" if ok is None else ("True" if ok else "False")
    old = get_condition(status, type_)
    transition = old["lastTransitionTime"] if old and old.get("status") == value and old.get(
        "lastTransitionTime") else (now or now_rfc3339())
    cond: dict[str, Any] = {"type": type_, "status": value, "reason": reason, "message": message,
                            "lastTransitionTime": transition}
    if generation:
        cond["observedGeneration"] = generation
    conditions = [c for c in status.get("conditions", ()) or () if c.get("type") != type_]
    conditions.append(cond)
    conditions.sort(key=lambda c: c.get("type", ""))
    out = dict(status)
    out["conditions"] = conditions
    return out
