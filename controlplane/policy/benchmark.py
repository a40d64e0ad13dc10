"""Micro-benchmark of policy decision time, for the project's benchmark harness and by hand.

`measure_decision_time(n)` loads `n` generated, realistic policies (mostly per export name and
namespace, some label selectors with In/NotIn/Exists, a few privileged ones, a few match-all and
a few that select on client attributes) and times single `decide` calls:

- "hit":  repeated requests, answered from the decision cache;
- "miss": every request distinct (a per-pod label differs), so each one is evaluated against
  the index and then inserted into the cache (evicting the oldest entry once full);
- "uncached": the evaluation alone (`decide_uncached`), no cache key built.

Run `python -m controlplane.policy.benchmark [N ...]` for a table.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from controlplane.policy.engine import PolicyEngine
from controlplane.policy.policy import Policy, parse_policy

__all__ = ["generate_policies", "generate_requests", "measure_decision_time"]

MAX_POLICIES = 200_000
MAX_DECISIONS = 1_000_000
_HIT_POOL = 512
_PEERS = 20
_REGIONS = ("eu", "us", "ap")
_APPS = ("web", "api", "db", "cache", "queue", "auth")
_TIERS = ("frontend", "backend", "batch")


def _shape(n_policies: int) -> tuple[int, int]:
    """(namespaces, exports per namespace) for a policy count: about 50 policies per namespace."""
    namespaces = max(1, min(200, n_policies // 50))
    exports = max(1, n_policies // namespaces // 2)
    return namespaces, exports


def _doc(kind: str, name: str, namespace: str | None, action: str, from_: list, to: list) -> dict:
    metadata = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "clusterlink.net/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": {
            "action": action,
            "from": [{"workloadSelector": s} for s in from_],
            "to": [{"workloadSelector": s} for s in to],
        },
    }


def generate_policies(n_policies: int, seed: int = 0) -> list[Policy]:
    """`n_policies` valid policies with a realistic mix of selectors (deterministic for a seed)."""
    if not 0 <= n_policies <= MAX_POLICIES:
        raise ValueError(f"n_policies must be in 0..{MAX_POLICIES}, got {n_policies}")
    rng = random.Random(seed)
    namespaces, exports = _shape(n_policies)
    out = []
    for i in range(n_policies):
        ns = f"ns-{rng.randrange(namespaces)}"
        export = f"svc-{rng.randrange(exports)}"
        peer = f"peer-{rng.randrange(_PEERS)}"
        action = "deny" if rng.random() < 0.2 else "allow"
        r = rng.random()
        if r < 0.03:  # privileged: quarantine a peer from an export, or a global allow for one export
            to = [{"matchLabels": {"export.clusterlink.net/name": export, "export.clusterlink.net/namespace": ns}}]
            from_ = [{"matchLabels": {"peer.clusterlink.net/name": peer}}] if action == "deny" else [{}]
            out.append(_doc("PrivilegedAccessPolicy", f"priv-{i}", None, action, from_, to))
            continue
        if r < 0.78:  # per export name (and namespace), from a peer or a peer region
            to = [{"matchLabels": {"export.clusterlink.net/name": export, "export.clusterlink.net/namespace": ns}}]
            if rng.random() < 0.7:
                from_ = [{"matchLabels": {"peer.clusterlink.net/name": peer}}]
            else:
                from_ = [{"matchExpressions": [
                    {"key": "peer.clusterlink.net/labels.region", "operator": "In", "values": rng.sample(_REGIONS, 2)}
                ]}]
        elif r < 0.88:  # export labels, several exports at once
            to = [{"matchExpressions": [
                {"key": "export.clusterlink.net/labels.app", "operator": "In", "values": rng.sample(_APPS, 2)},
                {"key": "export.clusterlink.net/labels.deprecated", "operator": "DoesNotExist"},
            ]}]
            from_ = [{"matchLabels": {"peer.clusterlink.net/name": peer}}]
        elif r < 0.95:  # client attributes (the client-attributes rule applies in these namespaces)
            to = [{"matchLabels": {"export.clusterlink.net/name": export}}]
            from_ = [{"matchExpressions": [
                {"key": "client.clusterlink.net/labels.tier", "operator": "NotIn", "values": [rng.choice(_TIERS)]},
                {"key": "client.clusterlink.net/service-account", "operator": "Exists"},
            ]}]
        elif r < 0.99:  # peer labels only on the destination side: indexed by the source
            to = [{"matchExpressions": [{"key": "peer.clusterlink.net/labels.region", "operator": "Exists"}]}]
            from_ = [{"matchLabels": {"peer.clusterlink.net/name": peer}}]
        else:  # match-all (the usual "allow-all" of a namespace)
            to, from_, action = [{}], [{}], "allow"
        out.append(_doc("AccessPolicy", f"p-{i}", ns, action, from_, to))
    return [parse_policy(doc) for doc in out]


def generate_requests(n_policies: int, count: int, seed: int = 0, *, unique: bool = False) -> list[tuple[dict, dict, str]]:
    """`count` (src, dst, namespace) requests aimed at the exports of `generate_policies`."""
    rng = random.Random(seed + 1)
    namespaces, exports = _shape(n_policies)
    out = []
    for i in range(count):
        ns = f"ns-{rng.randrange(namespaces)}"
        peer = rng.randrange(_PEERS)
        src = {
            "peer.clusterlink.net/name": f"peer-{peer}",
            "peer.clusterlink.net/labels.region": _REGIONS[peer % 3],
            "client.clusterlink.net/namespace": f"app-{rng.randrange(10)}",
            "client.clusterlink.net/service-account": f"sa-{rng.randrange(5)}",
            "client.clusterlink.net/labels.app": rng.choice(_APPS),
            "client.clusterlink.net/labels.tier": rng.choice(_TIERS),
        }
        if unique:
            src["client.clusterlink.net/labels.pod-template-hash"] = f"h{i:x}"
        dst = {
            "peer.clusterlink.net/name": "local",
            "peer.clusterlink.net/labels.region": "eu",
            "export.clusterlink.net/name": f"svc-{rng.randrange(exports)}",
            "export.clusterlink.net/namespace": ns,
            "export.clusterlink.net/labels.app": rng.choice(_APPS),
        }
        out.append((src, dst, ns))
    return out


def _time_calls(call: Callable[[Mapping, Mapping, str], object], requests: list[tuple[dict, dict, str]]) -> list[float]:
    """Time each call alone. The attribute maps are copied just before (untimed), as the gateway
    builds them just before it decides: the measurement is not of reading cold request data."""
    clock = time.perf_counter_ns
    samples = []
    append = samples.append
    for src, dst, ns in requests:
        src, dst = dict(src), dict(dst)
        start = clock()
        call(src, dst, ns)
        append(clock() - start)
    return [s / 1000.0 for s in samples]


@contextmanager
def _counting_collections() -> Iterator[list[int]]:
    """Counts the garbage collections (any generation) run inside the block: [count]."""
    count = [0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            count[0] += 1

    gc.callbacks.append(callback)
    try:
        yield count
    finally:
        gc.callbacks.remove(callback)


def _summary(samples_us: list[float]) -> dict[str, float]:
    ordered = sorted(samples_us)
    n = len(ordered)
    return {
        "p50_us": round(ordered[n // 2], 3),
        "p99_us": round(ordered[min(n - 1, (n * 99) // 100)], 3),
        "mean_us": round(statistics.fmean(ordered), 3),
    }


def measure_decision_time(n_policies: int, *, decisions: int = 20000, seed: int = 0) -> dict:
    """Time `decisions` decisions against `n_policies` generated policies, per cache mode.

    Returns {"n_policies", "decisions", "build_ms", "allowed_fraction", "p50_us", "p99_us",
    "mean_us" (these three are the cache-miss figures, the conservative ones), "hit_*", "miss_*",
    "uncached_*" (the same three for each mode), "cache": {"hit": {...}, "miss": {...},
    "uncached": {...}}, "gc": {"frozen_objects", "collections": {mode: count}}}. Loops are
    bounded (MAX_POLICIES, MAX_DECISIONS).

    Everything alive before timing is frozen (`gc.freeze`), as the gateway worker does after
    start-up, and unfrozen afterwards unless the caller had frozen objects itself; the collector
    stays enabled while timing (`gc.collections` counts its passes per mode).
    """
    if not 1 <= decisions <= MAX_DECISIONS:
        raise ValueError(f"decisions must be in 1..{MAX_DECISIONS}, got {decisions}")
    policies = generate_policies(n_policies, seed)
    # The cache is sized like the default but never smaller than the hit pool.
    engine = PolicyEngine()
    start = time.perf_counter()
    engine.replace_all(policies)
    build_ms = (time.perf_counter() - start) * 1000.0

    hit_pool = generate_requests(n_policies, min(_HIT_POOL, decisions), seed)
    hit_requests = [hit_pool[i % len(hit_pool)] for i in range(decisions)]
    miss_requests = generate_requests(n_policies, decisions, seed + 7, unique=True)

    # Time as the gateway runs: its worker freezes what start-up built (gc.freeze), so that the
    # collector never walks it again. Here that is the policies, the requests and whatever the
    # calling process holds (the benchmark harness's own objects, a torn-down fabric's leftovers).
    # The collector stays enabled: what decisions leave behind is part of their cost.
    frozen_before = gc.get_freeze_count()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    try:
        for src, dst, ns in hit_pool:  # warm the cache
            engine.decide(src, dst, ns)
        results, collections = {}, {}
        for mode, call, requests in (
            ("hit", engine.decide, hit_requests),
            ("miss", engine.decide, miss_requests),
            ("uncached", engine.decide_uncached, miss_requests),
        ):
            with _counting_collections() as count:
                samples = _time_calls(call, requests)
            results[mode], collections[mode] = _summary(samples), count[0]
    finally:
        if not frozen_before:  # a caller that froze its own objects keeps them (and ours) frozen
            gc.unfreeze()
    allowed = sum(engine.decide_uncached(src, dst, ns).allowed for src, dst, ns in miss_requests)

    out: dict = {
        "n_policies": n_policies,
        "decisions": decisions,
        "build_ms": round(build_ms, 2),
        "allowed_fraction": round(allowed / decisions, 3),
        **results["miss"],
        "cache": results,
        "gc": {"frozen_objects": frozen, "collections": collections},
    }
    for mode, figures in results.items():
        for name, value in figures.items():
            out[f"{mode}_{name}"] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[10, 1000, 10000], help="policy counts")
    parser.add_argument("--decisions", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    header = f"{'policies':>9} {'build ms':>9}  {'mode':<9} {'p50 us':>8} {'p99 us':>8} {'mean us':>8}"
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        result = measure_decision_time(size, decisions=args.decisions, seed=args.seed)
        for mode in ("hit", "miss", "uncached"):
            f = result["cache"][mode]
            print(f"{size:>9} {result['build_ms']:>9.1f}  {mode:<9} {f['p50_us']:>8.2f} {f['p99_us']:>8.2f} {f['mean_us']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
