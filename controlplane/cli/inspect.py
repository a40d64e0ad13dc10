"""`clusterlink link`, `status`, `diagnose` and `completion`.

- `link` writes the Peer object the *other* side needs to reach this peer (its name from this
  peer's certificate, its gateway addresses), and with `--apply` applies it to a control plane.
- `status` shows this peer as its control plane sees it: certificate, snapshot, the gateways and
  agents connected (and whether they hold the latest snapshot), peers, exports, imports, policies.
- `diagnose` turns the same into checks, each with a verdict (ok, warn, fail) and what to do.
- `completion bash|zsh` prints a completion script generated from the parser itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from controlplane import pki
from controlplane.cli.errors import CommandError
from controlplane.cli.objects import DEFAULT_WAIT, EXIT_NOT_IN_FORCE, _add_connection_flags, _call
from controlplane.cli.objects import _add_wait_flag, _report_rollout
from controlplane.model import schema as S
from controlplane.model.objects import SYSTEM_NAMESPACE, ModelError, parse_documents

CERT_WARN_DAYS = 30
DEFAULT_PEER_PORT = 443


# -- link ------------------------------------------------------------------------------------------

def _gateway(text: str) -> tuple[str, int | None]:
    """HOST[:PORT]; no port: None (the default applies)."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port or (host.count(":") and not host.startswith("[")):  # no port (IPv6 without one)
        return text.strip("[]"), None
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST[:PORT]")
    return host, int(port)


def peer_document(name: str, gateways: list[tuple[str, int]], namespace: str) -> dict[str, Any]:
    return {"apiVersion": S.API_VERSION, "kind": S.PEER.kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"gateways": [{"host": host, "port": port} for host, port in gateways]}}


def cmd_link(args: argparse.Namespace) -> int:
    name = args.name
    default_port = DEFAULT_PEER_PORT
    if args.values:
        try:
            values = yaml.safe_load(Path(args.values).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CommandError(f"cannot read the values file {args.values}: {exc}") from None
        if not isinstance(values, dict):
            raise CommandError(f"the values file {args.values} is not a mapping")
        name = name or (values.get("peer") or {}).get("name")
        service = (values.get("gateway") or {}).get("service") or {}
        port = service.get("nodePort") if service.get("type") == "NodePort" else service.get("port")
        if isinstance(port, int):
            default_port = port
    gateways = [(host, default_port if port is None else port) for host, port in args.gateway]
    if not name:
        raise CommandError("link needs --name (or --values of a deployment that names the peer)")
    if not gateways:
        raise CommandError("link needs at least one --gateway HOST[:PORT]: where the other peer reaches this "
                           "peer's gateway (its LoadBalancer address, or a node address and node port)")
    try:
        pki.validate_peer_name(name)
        directory = args.path / args.fabric / name
        identity = pki.load_peer_identity(directory, expected_name=name)
    except pki.PKIError as exc:
        raise CommandError(f"{exc} (link reads this peer's certificate directory, from `clusterlink create "
                           "peer-cert`)") from None
    doc = peer_document(identity.name, gateways, args.namespace)
    text = yaml.safe_dump(doc, sort_keys=False)
    try:
        parse_documents(text, source="link")  # what we emit is what apply accepts
    except ModelError as exc:
        raise CommandError("\n  ".join(["the Peer is not valid:", *exc.errors])) from None
    if args.apply:
        applied = _call(args, lambda c: c.apply(text, wait=args.wait))
        for line in applied.results:
            print(line)
        return 0 if _report_rollout(applied.rollout) else EXIT_NOT_IN_FORCE
    if args.output and args.output != "-":
        try:
            Path(args.output).write_text(text)
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"Wrote the Peer {identity.name} to {args.output}: apply it on the other peer "
              f"(clusterlink apply -f {args.output}, or kubectl apply -f).", file=sys.stderr)
    else:
        print(text, end="")
    return 0


# -- status ----------------------------------------------------------------------------------------

def _conditions_text(conditions: dict[str, dict[str, str]]) -> str:
    return " ".join(f"{t}={c['status']}" + (f" ({c['message']})" if c["status"] != "True" and c["message"] else "")
                    for t, c in sorted(conditions.items())) or "no conditions yet"


def render_status(st: dict[str, Any]) -> str:
    lines = []
    labels = ", ".join(f"{k}={v}" for k, v in sorted(st["labels"].items()))
    cert = st["certificate"]
    lines.append(f"Peer {st['peer']}" + (f" ({labels})" if labels else "")
                 + f"; certificate valid until {cert['not_after']} ({cert['days_left']:.0f} days)")
    snap = st["snapshot"]
    age = f", {snap['age_seconds']:.1f} s old" if snap.get("age_seconds") is not None else ""
    lines.append(f"Control plane: {st['store']} store, {'leader' if st['leader'] else 'follower'}; "
                 f"gateway snapshot {snap['gateway_version']}{age}")
    for role, title in (("gateway", "Gateways"), ("agent", "Agents")):
        rows = [w for w in st["watchers"] if w["role"] == role]
        lines.append(f"{title} ({len(rows)}):" + ("" if rows else " none connected"))
        for w in rows:
            lines.append(f"  {w['instance']}: snapshot {w['holds']}"
                         + ("" if w["current"] else " (not the latest yet)"))
    if st.get("silent_watchers"):
        lines.append(f"  and {st['silent_watchers']} older component(s) that do not report their snapshot")
    lines.append(f"Peers ({len(st['peers'])}):")
    for p in st["peers"]:
        lines.append(f"  {p['name']}  {', '.join(p['gateways'])}  reachable={p['reachable']}")
    lines.append(f"Exports ({len(st['exports'])}):")
    for e in st["exports"]:
        lines.append(f"  {e['namespace']}/{e['name']}  {_conditions_text(e['conditions'])}")
    lines.append(f"Imports ({len(st['imports'])}):")
    for i in st["imports"]:
        where = f"port {i['port']} -> target {i['targetPort'] or '-'}" + (f", vip {i['vip']}" if i["vip"] else "")
        lines.append(f"  {i['namespace']}/{i['name']}  {where}  {_conditions_text(i['conditions'])}")
    counts = st["policies"]
    lines.append("Policies: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in
                                         (S.ACCESS_POLICY.kind, S.PRIVILEGED_ACCESS_POLICY.kind)))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    st = _call(args, lambda c: c.status())
    print(json.dumps(st, indent=2) if args.output == "json" else render_status(st))
    return 0


# -- diagnose --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # ok | warn | fail
    detail: str


def diagnose(st: dict[str, Any]) -> list[Check]:
    """The checks of a status report (pure)."""
    out = [Check("control-plane", "ok", f"reachable; {st['store']} store, "
                                        f"{'leader' if st['leader'] else 'follower (another replica writes)'}")]
    days = st["certificate"]["days_left"]
    out.append(Check("certificate", "fail" if days <= 0 else "warn" if days < CERT_WARN_DAYS else "ok",
                     f"valid until {st['certificate']['not_after']} ({days:.0f} days)"
                     + ("; renew it: clusterlink create peer-cert --force, then update the Secret"
                        if days < CERT_WARN_DAYS else "")))
    version = st["snapshot"]["gateway_version"]
    out.append(Check("snapshot", "ok" if version else "fail",
                     f"gateway snapshot {version}" if version else "no snapshot published: see the control "
                                                                   "plane's log (reconcile failing?)"))
    for role, missing_verdict, missing in (
            ("gateway", "fail", "no gateway is connected: nothing serves the peer port or the Imports"),
            ("agent", "warn", "no agent is connected: Imports work through the gateway's target ports only")):
        rows = [w for w in st["watchers"] if w["role"] == role]
        behind = [w["instance"] for w in rows if not w["current"]]
        if not rows:
            out.append(Check(f"{role}s", missing_verdict, missing))
        elif behind:
            out.append(Check(f"{role}s", "warn", f"{len(rows)} connected; not at the latest snapshot yet: "
                                                 + ", ".join(behind)))
        else:
            nodes = sorted({w["node"] for w in rows if w["node"]})
            out.append(Check(f"{role}s", "ok", f"{len(rows)} connected, all current"
                                               + (f" (nodes: {', '.join(nodes)})" if nodes else "")))
    for p in st["peers"]:
        state = p["reachable"]
        cond = p["conditions"].get(S.PEER_REACHABLE, {})
        out.append(Check(f"peer {p['name']}", "ok" if state == "True" else "fail" if state == "False" else "warn",
                         f"reachable at {', '.join(p['gateways'])}" if state == "True"
                         else f"{'unreachable' if state == 'False' else 'not probed yet'} at "
                              f"{', '.join(p['gateways'])}" + (f": {cond['message']}" if cond.get("message") else "")))
    for kind, rows in (("export", st["exports"]), ("import", st["imports"])):
        for o in rows:
            bad = {t: c for t, c in o["conditions"].items() if c["status"] == "False"}
            pending = not o["conditions"]
            out.append(Check(f"{kind} {o['namespace']}/{o['name']}",
                             "fail" if bad else "warn" if pending else "ok",
                             _conditions_text(bad) if bad else "no conditions yet (not reconciled)" if pending
                             else _conditions_text(o["conditions"])))
    if not st["policies"].get(S.ACCESS_POLICY.kind) and not st["policies"].get(S.PRIVILEGED_ACCESS_POLICY.kind):
        out.append(Check("policies", "warn", "no AccessPolicy: default deny, every connection is refused"))
    else:
        out.append(Check("policies", "ok", ", ".join(f"{n} {k}" for k, n in sorted(st["policies"].items()))))
    return out


def cmd_diagnose(args: argparse.Namespace) -> int:
    try:
        checks = diagnose(_call(args, lambda c: c.status()))
    except CommandError as exc:
        checks = [Check("control-plane", "fail", str(exc))]
    if args.output == "json":
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{c.verdict.upper():<5} {c.name:<{width}}  {c.detail}")
    return 1 if any(c.verdict == "fail" for c in checks) else 0


# -- completion ------------------------------------------------------------------------------------

def _tree(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, list[str]]:
    """command path ("", "create", "create fabric", ...) -> the words that may follow it."""
    words: list[str] = []
    out: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words.append(name)
                out.update(_tree(sub, f"{prefix} {name}".strip()))
        else:
            words += [o for o in action.option_strings if o.startswith("--")]
            if action.choices and not action.option_strings:
                words += [str(c) for c in action.choices]
    out[prefix] = sorted(set(words))
    return out


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    tree = _tree(parser)
    cases = "\n".join(f'        "{path}") words="{" ".join(words)}" ;;' for path, words in sorted(tree.items()))
    script = f'''# clusterlink {shell} completion: source it, e.g. `source <(clusterlink completion {shell})`
_clusterlink() {{
    local cur path word i words
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case "$word" in -*) continue ;; esac
        case " $(_clusterlink_words "${{path}}") " in
            *" $word "*) path="${{path:+$path }}$word" ;;
        esac
    done
    COMPREPLY=($(compgen -W "$(_clusterlink_words "$path")" -- "$cur"))
}}
_clusterlink_words() {{
    local words=""
    case "$1" in
{cases}
    esac
    printf '%s' "$words"
}}
'''
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script + "complete -o default -F _clusterlink clusterlink\n"


def cmd_completion(args: argparse.Namespace) -> int:
    from controlplane.cli.main import build_parser

    print(completion_script(build_parser(), args.shell), end="")
    return 0


def _add_report_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="text (default) or json")
    _add_connection_flags(p)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "link", help="write (or apply) the Peer object another peer needs to reach this one",
        description="Write the Peer object of this peer (its name from this peer's certificate directory, "
                    "<path>/<fabric>/<name>/, its gateway addresses from --gateway) for the other side to apply; "
                    "--apply applies it to a control plane (the other peer's: --controlplane, --token-file).")
    p.add_argument("--name", help="this peer's name (default: the one in --values)")
    p.add_argument("--gateway", type=_gateway, action="append", default=[], metavar="HOST[:PORT]",
                   help=f"an address where the other peer reaches this peer's gateway (repeatable; port default "
                        f"{DEFAULT_PEER_PORT}, or the gateway Service's port from --values)")
    p.add_argument("--values", type=Path, help="the deployment's values file (clusterlink-values.yaml of "
                                               "`deploy peer`): the peer name and the gateway Service's port")
    p.add_argument("--fabric", default=pki.DEFAULT_FABRIC, help="fabric name (default: %(default)s)")
    p.add_argument("--path", type=Path, default=Path("."),
                   help="directory holding the fabric directory (default: current directory)")
    p.add_argument("--namespace", default=SYSTEM_NAMESPACE,
                   help="the other peer's ClusterLink namespace, where Peer objects live (default: %(default)s)")
    p.add_argument("-o", "--output", help="write the Peer to this file (default: stdout)")
    p.add_argument("--apply", action="store_true", help="apply it to the control plane given by --controlplane")
    _add_wait_flag(p)
    _add_connection_flags(p)
    p.set_defaults(handler=cmd_link)

    p = subparsers.add_parser(
        "status", help="this peer: certificate, snapshot, gateways and agents, peers, exports, imports",
        description="Show this peer as its control plane sees it: the certificate's expiry, the latest "
                    "snapshot, each connected gateway worker and agent (and whether it holds the latest snapshot), "
                    "the peers (reachable?), exports and imports with their conditions, the policies.")
    _add_report_flags(p)
    p.set_defaults(handler=cmd_status)

    p = subparsers.add_parser(
        "diagnose", help="check this peer, with a verdict (ok, warn, fail) per check",
        description="Check this peer: control plane, certificate expiry, snapshot, gateways and agents "
                    "connected and current, every peer reachable, every export and import valid, policies. "
                    "Exit status 1 when a check fails.")
    _add_report_flags(p)
    p.set_defaults(handler=cmd_diagnose)

    p = subparsers.add_parser("completion", help="print a shell completion script (bash, zsh)",
                              description="Print a completion script: source <(clusterlink completion bash).")
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    p.set_defaults(handler=cmd_completion)


__all__ = ["DEFAULT_WAIT", "register"]
