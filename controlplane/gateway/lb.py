"""Load balancing of an Import's sources, pure: the order in which to try them.

ClusterLink's schemes, kept identical (users' tests depend on them):
- `round-robin` (the default): a per-Import counter is incremented for every connection and the
  first source tried is `counter % n`, so the very first connection goes to index 1; on failure
  the next index, wrapping — and the counter advances for that failover selection too (the caller
  increments it per attempt), so with one source gone the others alternate;
- `random`: a random first index, then the next ones (linear probing);
- `static`: index 0, then 1, 2, ... (an ordered failover list).
Sources whose peer is unreachable are postponed: tried, in the same order, only after all others.
"""

from __future__ import annotations

from collections.abc import Collection

ROUND_ROBIN = "round-robin"
RANDOM = "random"
STATIC = "static"
SCHEMES = (ROUND_ROBIN, RANDOM, STATIC)
DEFAULT_SCHEME = ROUND_ROBIN


def normalize_scheme(scheme: str) -> str:
    """The scheme to use for an Import's `lbScheme` ("" means the default); ValueError if unknown."""
    if not scheme:
        return DEFAULT_SCHEME
    if scheme not in SCHEMES:
        raise ValueError(f"unknown load-balancing scheme {scheme!r} (want one of {', '.join(SCHEMES)})")
    return scheme


def first_index(scheme: str, count: int, *, counter: int = 0, random_value: int = 0) -> int:
    """The first source to try. `counter`: the Import's round-robin counter after this
    connection's increment (1 for the first connection); `random_value`: any random integer."""
    if count <= 0:
        raise ValueError("an Import needs at least one source")
    scheme = normalize_scheme(scheme)
    if scheme == ROUND_ROBIN:
        return counter % count
    if scheme == RANDOM:
        return random_value % count
    return 0


def source_order(scheme: str, count: int, *, counter: int = 0, random_value: int = 0,
                 unreachable: Collection[int] = ()) -> list[int]:
    """Every source index once, in the order to try them (see the module docstring)."""
    if count <= 0:
        return []
    start = first_index(scheme, count, counter=counter, random_value=random_value)
    order = [(start + i) % count for i in range(count)]
    if not unreachable:
        return order
    return [i for i in order if i not in unreachable] + [i for i in order if i in unreachable]
