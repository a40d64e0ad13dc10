"""Entry point of the `clusterlink` command: builds the parser from the command modules and runs one.

Each command group is a module of this package exposing `register(subparsers)`, which adds its
sub-commands and sets `handler` (a function `handler(args) -> int`) on each of them. To add a
group, import its module and append it to `COMMAND_MODULES`.

Exit codes: 0 success, 1 a `CommandError` (one line on stderr), 2 a usage error (argparse),
3 `apply`/`delete` stored the change but not every gateway and agent confirmed it in force within
--wait (they are named on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from controlplane.api import buildinfo
from controlplane.cli import create, deploy, inspect, objects
from controlplane.cli.errors import CommandError

COMMAND_MODULES = (create, deploy, objects, inspect)

PROG = "clusterlink"


def build_parser() -> argparse.ArgumentParser:
    """The full `clusterlink` parser, with every module of `COMMAND_MODULES` registered."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Manage a ClusterLink fabric: certificates, peers, exports, imports and policies.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {buildinfo.version()}",
                        help="print the version and exit")
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True, help="the command to run"
    )
    for module in COMMAND_MODULES:
        module.register(subparsers)
    version = subparsers.add_parser("version", help="print the version of clusterlink and of what it runs on",
                                    description="Print the clusterlink version, Python's, and the versions of "
                                                "the libraries that matter (grpcio, h2, cryptography, protobuf).")
    version.add_argument("-o", "--output", choices=("text", "json"), default="text", help="text (default) or json")
    version.set_defaults(handler=_print_version)
    return parser


def _print_version(args: argparse.Namespace) -> int:
    import json
    import platform

    info = {"clusterlink": buildinfo.version(), "python": platform.python_version()}
    for dist in ("grpcio", "h2", "cryptography", "protobuf", "h11"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "not installed"
    if args.output == "json":
        print(json.dumps(info, indent=2))
    else:
        print(f"clusterlink {info.pop('clusterlink')}")
        for name, value in info.items():
            print(f"  {name} {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `clusterlink` with `argv` (default: the process arguments); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the help, the version or the usage error
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return args.handler(args)
    except CommandError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: one line for the user, the traceback on request
        if os.environ.get("CLUSTERLINK_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (set CLUSTERLINK_DEBUG=1 to see where; "
              "please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
