"""Round-robin counters shared by the gateway's worker processes: a small memory-mapped file.

The supervisor creates the file (`SharedCounters.create`) in its private runtime directory; every
worker opens it and increments the counter of an Import for each egress connection, so that
`round-robin` is global to the gateway rather than per worker (ClusterLink's per-replica counters
are one of its gaps).

Layout: a 16-byte header (`CLRR`, version, slot count) then a fixed table of slots, each a u64
fingerprint of the Import key and a u64 counter. A key finds its slot by linear probing from its
fingerprint (slots are never freed; 4096 of them outlast any realistic number of Imports, and when
the table is full keys share their home slot, which only makes their rotations interleave).
Increments hold a `fcntl` record lock on the slot's bytes; claiming a free slot holds a lock on
the whole table. Each process remembers the slots it found.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

COUNTERS_FILE = "rr-counters"  # its name in the supervisor's runtime directory
MAGIC = b"CLRR"
VERSION = 1
DEFAULT_SLOTS = 4096
_HEADER = struct.Struct("<4sII8x")
_SLOT = struct.Struct("<QQ")


class CountersError(Exception):
    """The counters file is missing or not one of ours."""


def fingerprint(key: str) -> int:
    """A stable 64-bit fingerprint of an Import key, never 0 (0 marks a free slot)."""
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return value or 1


class SharedCounters:
    """Counters in a file shared by processes (see the module docstring). Not thread-safe."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise CountersError(f"cannot open the round-robin counters file {self.path}: {exc.strerror}") from None
        try:
            size = os.fstat(self._fd).st_size
            if size < _HEADER.size:
                raise CountersError(f"{self.path} is not a round-robin counters file (too short)")
            self._map = mmap.mmap(self._fd, size)
            magic, version, slots = _HEADER.unpack_from(self._map, 0)
            if magic != MAGIC or version != VERSION or size != _HEADER.size + slots * _SLOT.size:
                self._map.close()
                raise CountersError(f"{self.path} is not a round-robin counters file of version {VERSION}")
        except BaseException:
            os.close(self._fd)
            raise
        self.slots = slots
        self._known: dict[str, int] = {}
        self._full_reported = False

    @staticmethod
    def create(path: Path | str, slots: int = DEFAULT_SLOTS) -> Path:
        """Write an empty table at `path` (mode 0600), replacing any file there."""
        if slots < 1:
            raise ValueError("slots must be at least 1")
        path = Path(path)
        data = _HEADER.pack(MAGIC, VERSION, slots) + bytes(slots * _SLOT.size)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return path

    def _offset(self, slot: int) -> int:
        return _HEADER.size + slot * _SLOT.size

    def _find_slot(self, key: str) -> int:
        slot = self._known.get(key)
        if slot is not None:
            return slot
        fp = fingerprint(key)
        home = fp % self.slots
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 0, 0)
        try:
            for i in range(self.slots):
                slot = (home + i) % self.slots
                owner, _ = _SLOT.unpack_from(self._map, self._offset(slot))
                if owner == fp:
                    break
                if owner == 0:
                    _SLOT.pack_into(self._map, self._offset(slot), fp, 0)
                    break
            else:
                slot = home
                if not self._full_reported:
                    self._full_reported = True
                    log.warning("The round-robin counters table %s is full (%d Imports): Import %s shares a "
                                "counter with another one", self.path, self.slots, key)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 0, 0)
        self._known[key] = slot
        return slot

    def increment(self, key: str) -> int:
        """Add one to the counter of `key` and return the new value (1 the first time)."""
        slot = self._find_slot(key)
        offset = self._offset(slot)
        fcntl.lockf(self._fd, fcntl.LOCK_EX, _SLOT.size, offset)
        try:
            owner, value = _SLOT.unpack_from(self._map, offset)
            value = (value + 1) & 0xFFFFFFFFFFFFFFFF
            _SLOT.pack_into(self._map, offset, owner, value)
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, _SLOT.size, offset)
        return value

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
