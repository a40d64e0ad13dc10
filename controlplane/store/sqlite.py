"""The standalone store: objects in an embedded SQLite file.

One table of objects (kind, namespace, name → JSON metadata/spec/status, resourceVersion,
generation) and one of secrets. Writes are transactions; listeners run after commit. WAL mode, so
a crash loses at most the write in flight and never corrupts earlier state.
"""

from __future__ import annotations

import json
import logging
import os
import secrets as _secrets
import sqlite3
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from controlplane.model.conditions import now_rfc3339
from controlplane.model.objects import Object

from .base import Event, EventType, Listener, StoreError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    labels TEXT NOT NULL, annotations TEXT NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
    resource_version INTEGER NOT NULL, generation INTEGER NOT NULL, uid TEXT NOT NULL, created TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('resource_version', 0);
"""

_COLUMNS = "kind, namespace, name, labels, annotations, spec, status, resource_version, generation, uid, created"


def parse_url(url: str) -> Path:
    """`sqlite:///abs/path.db` (or `sqlite://rel.db`) → the file path."""
    if not url.startswith("sqlite://"):
        raise ValueError(f"store URL {url!r} must start with sqlite:// (e.g. sqlite:///var/lib/clusterlink/state.db)")
    path = url[len("sqlite://"):]
    if not path:
        raise ValueError(f"store URL {url!r} names no file")
    return Path(path)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class SQLiteStore:
    thread_safe = True  # every method holds the store's lock; listeners run on the writing thread

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store {self.path}: {exc}") from exc
        os.chmod(self.path, 0o600)

    # -- reading ---------------------------------------------------------------------------------
    def _row_to_object(self, row: tuple) -> Object:
        kind, ns, name, labels, annotations, spec, status, rv, gen, uid, created = row
        return Object(kind=kind, namespace=ns, name=name, labels=json.loads(labels),
                      annotations=json.loads(annotations), spec=json.loads(spec), status=json.loads(status),
                      resource_version=rv, generation=gen, uid=uid, creation_timestamp=created)

    def list(self, kind: str) -> list[Object]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM objects WHERE kind=? ORDER BY namespace, name",
                                    (kind,)).fetchall()
        return [self._row_to_object(r) for r in rows]

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM objects WHERE kind=? AND namespace=? AND name=?",
                                   (kind, namespace, name)).fetchone()
        return self._row_to_object(row) if row else None

    # -- writing ---------------------------------------------------------------------------------
    def _next_rv(self) -> int:
        self._db.execute("UPDATE meta SET value = value + 1 WHERE key='resource_version'")
        return self._db.execute("SELECT value FROM meta WHERE key='resource_version'").fetchone()[0]

    def _write(self, fn: Callable[[], tuple[Event | None, Any]]) -> Any:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                event, result = fn()
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        if event is not None:
            self._emit(event)
        return result

    def apply(self, obj: Object) -> Object:
        def do() -> tuple[Event | None, Object]:
            old = self.get(obj.kind, obj.namespace, obj.name)
            if old is not None and (_canon(old.spec), _canon(old.labels), _canon(old.annotations)) == (
                    _canon(obj.spec), _canon(obj.labels), _canon(obj.annotations)):
                return None, old  # unchanged: no new version, no event
            rv = self._next_rv()
            if old is None:
                new = Object(kind=obj.kind, namespace=obj.namespace, name=obj.name, spec=dict(obj.spec),
                             labels=dict(obj.labels), annotations=dict(obj.annotations), status={},
                             resource_version=rv, generation=1, uid=str(uuid.uuid4()),
                             creation_timestamp=now_rfc3339())
                etype = EventType.ADDED
            else:
                generation = old.generation + (1 if _canon(old.spec) != _canon(obj.spec) else 0)
                new = Object(kind=obj.kind, namespace=obj.namespace, name=obj.name, spec=dict(obj.spec),
                             labels=dict(obj.labels), annotations=dict(obj.annotations), status=dict(old.status),
                             resource_version=rv, generation=generation, uid=old.uid,
                             creation_timestamp=old.creation_timestamp)
                etype = EventType.MODIFIED
            self._db.execute(
                f"INSERT OR REPLACE INTO objects ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (new.kind, new.namespace, new.name, _canon(new.labels), _canon(new.annotations), _canon(new.spec),
                 _canon(new.status), new.resource_version, new.generation, new.uid, new.creation_timestamp))
            return Event(etype, new), new

        try:
            return self._write(do)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot store {obj.key}: {exc}") from exc

    def update_spec(self, obj: Object, spec: Mapping[str, Any]) -> Object | None:
        current = self.get(obj.kind, obj.namespace, obj.name)
        if current is None or current.uid != obj.uid:
            return None
        return self.apply(current.with_spec(spec))

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        def do() -> tuple[Event | None, bool]:
            old = self.get(kind, namespace, name)
            if old is None:
                return None, False
            self._db.execute("DELETE FROM objects WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name))
            self._next_rv()
            return Event(EventType.DELETED, old), True

        try:
            return self._write(do)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot delete {kind} {namespace}/{name}: {exc}") from exc

    def set_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        def do() -> tuple[Event | None, bool]:
            old = self.get(kind, namespace, name)
            if old is None or _canon(old.status) == _canon(status):
                return None, False
            rv = self._next_rv()
            self._db.execute("UPDATE objects SET status=?, resource_version=? WHERE kind=? AND namespace=? AND name=?",
                             (_canon(status), rv, kind, namespace, name))
            new = Object(kind=old.kind, namespace=old.namespace, name=old.name, spec=old.spec, labels=old.labels,
                         annotations=old.annotations, status=dict(status), resource_version=rv,
                         generation=old.generation, uid=old.uid, creation_timestamp=old.creation_timestamp)
            return Event(EventType.MODIFIED, new), True

        try:
            return self._write(do)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the status of {kind} {namespace}/{name}: {exc}") from exc

    def secret(self, name: str, size: int = 32) -> bytes:
        return self._get_or_create(name, lambda: _secrets.token_bytes(size))

    def token(self, name: str) -> str:
        return self._get_or_create(f"token:{name}", lambda: _secrets.token_urlsafe(32).encode()).decode()

    def _get_or_create(self, key: str, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            row = self._db.execute("SELECT value FROM secrets WHERE name=?", (key,)).fetchone()
            if row:
                return bytes(row[0])
            value = make()
            self._db.execute("INSERT INTO secrets (name, value) VALUES (?, ?)", (key, value))
            return value

    # -- events ----------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("store listener %r failed on %s %s", listener, event.type.value, event.obj.key)

    def close(self) -> None:
        with self._lock:
            self._db.close()
