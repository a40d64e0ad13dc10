"""`python -m fabric.cleanup [--id XXXX] [--dry-run]`: remove what crashed fabric runs left behind.

Everything of ours is found by name: processes recorded in `<runtime root>/cl*/pids` (killed by
pid, only while /proc still shows the start time and command line that were recorded), processes
inside `cl*` cgroups or `cl*` network namespaces, BPF programs attached to those cgroups, the
namespaces, `cl*` links in the root namespace, the `cl*` cgroups (deepest first) and the runtime
directories. Without `--id`, a fabric whose owner process is still alive is not a leftover and is
left alone; with `--id`, that fabric is removed whatever its state.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from fabric import cgroups
from fabric.leftovers import DEFAULT_RUNTIME_ROOT, PREFIX, Leftovers, find_leftovers
from fabric.removal import Removal, owner_alive

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fabric.cleanup", description=__doc__.splitlines()[0])
    parser.add_argument("--id", dest="fabric_id", help="only this fabric (4 hex digits), even if its owner is alive")
    parser.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    parser.add_argument("--runtime-root", type=Path, default=DEFAULT_RUNTIME_ROOT)
    parser.add_argument("--cgroup-root", type=Path, default=cgroups.DEFAULT_ROOT)
    args = parser.parse_args(argv)

    if args.fabric_id is not None:
        if not re.fullmatch(r"[0-9a-f]{4}", args.fabric_id):
            parser.error("--id takes 4 lowercase hex digits")
        groups: dict[str | None, Leftovers] = {args.fabric_id: find_leftovers(PREFIX + args.fabric_id, args.runtime_root, args.cgroup_root)}
    else:
        groups = find_leftovers(PREFIX, args.runtime_root, args.cgroup_root).by_fabric()

    errors: list[Exception] = []
    removed = 0
    for fabric_id, leftovers in sorted(groups.items(), key=lambda kv: kv[0] or ""):
        label = f"fabric {PREFIX}{fabric_id}" if fabric_id else f"other {PREFIX}* objects"
        if args.fabric_id is None and fabric_id is not None:
            owner = owner_alive(args.runtime_root / f"{PREFIX}{fabric_id}")
            if owner is not None:
                print(f"skipping {label}: in use by live pid {owner} (pass --id {fabric_id} to remove it anyway)")
                continue
        removal = Removal(report=lambda line, label=label: print(f"{label}: {line}"), dry_run=args.dry_run)
        removal.run(**leftovers.removal_args())
        errors.extend(removal.errors)
        removed += len(removal.removed)
    if not removed and not errors:
        print("nothing to remove")
    for exc in errors:
        print(f"error: {exc}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
