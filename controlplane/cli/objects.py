"""`clusterlink apply`, `get` and `delete`: manage objects on a (standalone) control plane.

They talk to the control plane's management API: address from --controlplane or
$CLUSTERLINK_CONTROLPLANE, token from --token-file, $CLUSTERLINK_TOKEN or $CLUSTERLINK_TOKEN_FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from controlplane.api.client import APIError, ControlPlaneClient, Endpoint, Rollout, read_token
from controlplane.cli.errors import CommandError
from controlplane.model import schema as S
from controlplane.model.objects import DEFAULT_NAMESPACE, ModelError, parse_documents

DEFAULT_CONTROLPLANE = "unix:/run/clusterlink/controlplane.sock"
DEFAULT_TOKEN_FILE = "/var/lib/clusterlink/admin.token"
DEFAULT_WAIT = 10.0
EXIT_NOT_IN_FORCE = 3  # stored, but not confirmed in force on every gateway and agent within --wait


def _add_wait_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", type=_seconds, default=DEFAULT_WAIT, metavar="SECONDS",
                   help="return once the gateways and agents connected to the control plane confirm the change "
                        "is in force (the next connection sees it; established connections keep what they were "
                        f"admitted with), waiting at most SECONDS (default {DEFAULT_WAIT:g}); if some have not "
                        f"confirmed by then, say which and exit with status {EXIT_NOT_IN_FORCE}; 0 = return once "
                        "stored")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 300:
        raise argparse.ArgumentTypeError(f"--wait must be between 0 and 300 seconds, not {text}")
    return value


def _report_rollout(rollout: Rollout) -> bool:
    """Say on stderr what is not in force yet; True if all is."""
    if not rollout.waited:
        return True
    if rollout.complete:
        if not rollout.confirmed and not rollout.silent:
            print("clusterlink: note: no gateway or agent is connected to the control plane; each one gets the "
                  "change before it serves", file=sys.stderr)
        return True
    print(f"clusterlink: warning: stored, but not yet in force on {len(rollout.pending)} of "
          f"{len(rollout.pending) + rollout.confirmed} gateways and agents:", file=sys.stderr)
    for line in rollout.pending:
        print(f"  {line}", file=sys.stderr)
    return False


def _add_connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--controlplane", default=os.environ.get("CLUSTERLINK_CONTROLPLANE", DEFAULT_CONTROLPLANE),
                   help="control-plane API address, unix:/<path> or host:port "
                        f"(env CLUSTERLINK_CONTROLPLANE; default {DEFAULT_CONTROLPLANE})")
    p.add_argument("--token-file", default=os.environ.get("CLUSTERLINK_TOKEN_FILE", DEFAULT_TOKEN_FILE),
                   help="file with the admin token (env CLUSTERLINK_TOKEN_FILE; CLUSTERLINK_TOKEN gives the token "
                        f"itself; default {DEFAULT_TOKEN_FILE})")
    p.add_argument("--ca", type=Path, default=os.environ.get("CLUSTERLINK_CA"),
                   help="CA certificate to verify a TCP control-plane address (env CLUSTERLINK_CA)")
    p.add_argument("--server-name", default=os.environ.get("CLUSTERLINK_SERVER_NAME", ""),
                   help="peer name the control plane's certificate must carry (TCP only; env "
                        "CLUSTERLINK_SERVER_NAME)")


def _endpoint(args: argparse.Namespace) -> Endpoint:
    token = os.environ.get("CLUSTERLINK_TOKEN", "").strip()
    if not token:
        try:
            token = read_token(args.token_file)
        except APIError as exc:
            raise CommandError(f"{exc.message}; pass --token-file or set CLUSTERLINK_TOKEN") from None
    return Endpoint(address=args.controlplane, token=token, ca_file=args.ca, server_name=args.server_name)


def _call(args: argparse.Namespace, fn) -> Any:  # type: ignore[no-untyped-def]
    endpoint = _endpoint(args)

    async def go() -> Any:
        async with ControlPlaneClient(endpoint) as client:
            return await fn(client)

    try:
        return asyncio.run(go())
    except APIError as exc:
        if exc.code == "UNAVAILABLE":
            raise CommandError(f"cannot reach the control plane at {endpoint.address}: {exc.message}") from None
        raise CommandError(exc.message) from None


# -- apply -----------------------------------------------------------------------------------------
def _read_inputs(paths: list[str]) -> list[tuple[str, str]]:
    out = []
    for path in paths:
        if path == "-":
            out.append(("<stdin>", sys.stdin.read()))
            continue
        p = Path(path)
        files = sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml", ".json")) if p.is_dir() else [p]
        for f in files:
            try:
                out.append((str(f), f.read_text()))
            except OSError as exc:
                raise CommandError(f"cannot read {f}: {exc.strerror}") from None
    return out


def cmd_apply(args: argparse.Namespace) -> int:
    inputs = _read_inputs(args.filename)
    # Validate everything locally first: a bad document anywhere applies nothing.
    errors: list[str] = []
    for source, text in inputs:
        try:
            parse_documents(text, source=source)
        except ModelError as exc:
            errors += exc.errors
    if errors:
        raise CommandError("nothing applied:\n  " + "\n  ".join(errors))
    text = "\n---\n".join(t for _, t in inputs)
    applied = _call(args, lambda c: c.apply(text, wait=args.wait))
    for line in applied.results:
        print(line)
    return 0 if _report_rollout(applied.rollout) else EXIT_NOT_IN_FORCE


# -- get -------------------------------------------------------------------------------------------
_FILTER = re.compile(r'^(\w+)\[\?\(@\.(\w+)=="([^"]*)"\)\]$')
_INDEX = re.compile(r"^(\w+)\[(\d+)\]$")


def json_path(doc: Any, path: str) -> Any:
    """The tiny subset of JSONPath our printer columns use."""
    value = doc
    for part in re.findall(r"(?:[^.\[]|\[[^\]]*\])+", path):
        if value is None:
            return None
        m = _FILTER.match(part)
        if m:
            items = value.get(m.group(1)) or [] if isinstance(value, dict) else []
            value = next((i for i in items if isinstance(i, dict) and str(i.get(m.group(2))) == m.group(3)), None)
            continue
        m = _INDEX.match(part)
        if m:
            items = value.get(m.group(1)) if isinstance(value, dict) else None
            idx = int(m.group(2))
            value = items[idx] if isinstance(items, list) and idx < len(items) else None
            continue
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _age(ts: str) -> str:
    try:
        then = _dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
    except (TypeError, ValueError):
        return "-"
    secs = int((_dt.datetime.now(_dt.timezone.utc) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def render_table(info: S.KindInfo, objects: list[dict], *, wide: bool) -> str:
    headers = (["NAMESPACE"] if info.namespaced else []) + ["NAME"]
    cols = [c for c in info.columns if wide or c.priority == 0]
    headers += [c.name.upper() for c in cols]
    if wide:
        headers.append("CONDITIONS")
    rows = []
    for doc in objects:
        meta = doc.get("metadata", {})
        row = ([meta.get("namespace", "")] if info.namespaced else []) + [meta.get("name", "")]
        for c in cols:
            value = json_path(doc, c.json_path)
            row.append(_age(value) if c.type == "date" else ("<none>" if value in (None, "") else str(value)))
        if wide:
            conds = (doc.get("status") or {}).get("conditions") or []
            row.append("; ".join(f"{c['type']}={c['status']}" + (f" ({c['message']})" if c.get("message") else "")
                                 for c in conds) or "<none>")
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["   ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [headers, *rows]]
    return "\n".join(lines)


def cmd_get(args: argparse.Namespace) -> int:
    info = S.resolve_kind(args.kind)
    if info is None:
        raise CommandError(f"unknown kind {args.kind!r} (known: {', '.join(k.plural for k in S.ALL_KINDS)})")
    namespace = "" if args.all_namespaces else (args.namespace or DEFAULT_NAMESPACE)
    if info.kind == S.PEER.kind and not args.namespace and not args.all_namespaces:
        namespace = ""
    objects = json.loads(_call(args, lambda c: c.get(info.kind, namespace, args.name or "")))
    if args.output == "json":
        print(json.dumps(objects[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": objects},
                         indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump(objects[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": objects},
                             sort_keys=False), end="")
    elif not objects:
        print(f"No {info.plural} found" + (f" in namespace {namespace}" if namespace else "") + ".")
    else:
        print(render_table(info, objects, wide=args.output == "wide"))
    return 0


# -- delete ----------------------------------------------------------------------------------------
def cmd_delete(args: argparse.Namespace) -> int:
    targets: list[tuple[str, str, str]] = []
    if args.filename:
        for source, text in _read_inputs(args.filename):
            try:
                targets += [(o.kind, o.namespace, o.name) for o in parse_documents(text, source=source)]
            except ModelError as exc:
                raise CommandError("\n  ".join(["nothing deleted:", *exc.errors])) from None
    else:
        if not args.kind or not args.names:
            raise CommandError("delete needs KIND NAME... or -f FILE")
        info = S.resolve_kind(args.kind)
        if info is None:
            raise CommandError(f"unknown kind {args.kind!r}")
        namespace = (args.namespace or DEFAULT_NAMESPACE) if info.namespaced else ""
        if info.kind == S.PEER.kind and not args.namespace:
            from controlplane.model.objects import SYSTEM_NAMESPACE

            namespace = SYSTEM_NAMESPACE
        targets = [(info.kind, namespace, n) for n in args.names]
    failed = False
    late: Rollout | None = None  # the first deletion not confirmed in force: later ones do not wait again
    for kind, namespace, name in targets:
        where = f"{namespace}/{name}" if namespace else name
        wait = args.wait if late is None else 0.0
        try:
            rollout = _call(args, lambda c, k=kind, ns=namespace, n=name, w=wait: c.delete(k, ns, n, wait=w))
            print(f"{kind.lower()}.{S.GROUP} {where} deleted")
        except CommandError as exc:
            if args.ignore_not_found and "not found" in str(exc):
                continue
            print(f"clusterlink: error: {exc}", file=sys.stderr)
            failed = True
            continue
        if rollout.waited and not rollout.complete:
            late = rollout
    if failed:
        return 1
    return 0 if late is None or _report_rollout(late) else EXIT_NOT_IN_FORCE


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("apply", help="create or update objects from YAML files",
                              description="Create or update objects from YAML (the manifests written for "
                                          "ClusterLink work unchanged). Every document is validated first: if one "
                                          "is invalid, nothing is applied.")
    p.add_argument("-f", "--filename", action="append", required=True,
                   help="file, directory of .yaml/.yml/.json files, or - for stdin (repeatable)")
    _add_wait_flag(p)
    _add_connection_flags(p)
    p.set_defaults(handler=cmd_apply)

    p = subparsers.add_parser("get", help="list objects and their status conditions",
                              description="Show objects of one kind: peers, exports, imports, accesspolicies, "
                                          "privilegedaccesspolicies, workloads, localservices.")
    p.add_argument("kind", help="kind, plural or short name (e.g. imports, peer, clpap)")
    p.add_argument("name", nargs="?", help="one object's name (default: all)")
    p.add_argument("-n", "--namespace", help=f"namespace (default: {DEFAULT_NAMESPACE}; Peers: all)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="objects of every namespace")
    p.add_argument("-o", "--output", choices=("table", "wide", "yaml", "json"), default="table",
                   help="table (default), wide (with conditions), yaml or json")
    _add_connection_flags(p)
    p.set_defaults(handler=cmd_get)

    p = subparsers.add_parser("delete", help="delete objects",
                              description="Delete objects by kind and name, or every object of YAML files.")
    p.add_argument("kind", nargs="?", help="kind, plural or short name")
    p.add_argument("names", nargs="*", help="names of the objects to delete")
    p.add_argument("-f", "--filename", action="append", help="delete the objects these files describe")
    p.add_argument("-n", "--namespace", help=f"namespace (default: {DEFAULT_NAMESPACE})")
    p.add_argument("--ignore-not-found", action="store_true", help="a missing object is not an error")
    _add_wait_flag(p)
    _add_connection_flags(p)
    p.set_defaults(handler=cmd_delete)
