"""`make demo`: two ClusterLink peers on this machine, an export, an import, policies, and a request
that flows through the eBPF redirect and the mTLS tunnel — then is refused by a deny policy.

Everything runs for real: network namespaces for the peers, nodes and pods, the control planes,
gateways and node agents as processes, BPF programs in the kernel, TLS with certificates issued by
`clusterlink create`. Exit code 0 when every step behaved as shown, 1 with the reason otherwise.
Nothing is left behind.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time

from fabric.peer import ClusterLinkFabric, Peer

ECHO_PORT = 8080

ALLOW_ALL = """
apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {name: allow-all, namespace: default}
spec:
  action: allow
  from: [{workloadSelector: {}}]
  to: [{workloadSelector: {}}]
"""

DENY_ECHO = """
apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {name: deny-echo, namespace: default}
spec:
  action: deny
  from: [{workloadSelector: {matchLabels: {client.clusterlink.net/labels.app: client}}}]
  to: [{workloadSelector: {matchLabels: {export.clusterlink.net/name: echo}}}]
"""


class DemoFailed(Exception):
    pass


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def show(peer: Peer, *args: str) -> None:
    print(f"$ clusterlink {' '.join(args)}        # on {peer.name}")
    out = peer.cli(*args)
    print(textwrap.indent((out.stdout + out.stderr).rstrip(), "  "))
    if out.returncode != 0:
        raise DemoFailed(f"`clusterlink {' '.join(args)}` on {peer.name} failed")


def apply(peer: Peer, text: str) -> None:
    print(f"$ clusterlink apply -f -        # on {peer.name}")
    print(textwrap.indent(text.strip(), "  | "))
    out = peer.cli("apply", "-f", "-", input=text)
    print(textwrap.indent((out.stdout + out.stderr).rstrip(), "  "))
    if out.returncode != 0:
        raise DemoFailed(f"apply on {peer.name} failed")


def run_demo(keep: bool = False) -> None:
    with ClusterLinkFabric() as fab:
        try:
            _steps(fab, keep)
        except Exception:
            print("\nprocess logs:\n" + fab.logs(), file=sys.stderr)
            raise
    print("demo finished: every step behaved as shown; nothing left behind")


def _steps(fab: ClusterLinkFabric, keep: bool) -> None:
    east = fab.add_peer("east", labels={"region": "east"})
    west = fab.add_peer("west", labels={"region": "west"})
    client = east.add_pod("client", labels={"app": "client"})
    server = west.add_pod("echo", labels={"app": "echo"})

    say("Two peers (east, west): network namespaces, certificates, control planes, gateways, node agents")
    t0 = time.monotonic()
    fab.start(agents=True)
    print(f"started in {time.monotonic() - t0:.1f} s; fabric {fab.topology.prefix}, work dir {fab.workdir}")
    print(f"east gateway {east.wan_ip}:443, west gateway {west.wan_ip}:443 (mTLS, fabric CA "
          f"{fab.certs_root / fab.fabric_name / 'cert.pem'})")
    fab.wait_reachable(timeout=30)
    show(east, "get", "peers")

    say("West runs an HTTP echo service and exports it")
    server.serve_http_echo(ECHO_PORT, name="west")
    apply(west, f"""
apiVersion: clusterlink.net/v1alpha1
kind: LocalService
metadata: {{name: echo, namespace: default}}
spec: {{host: {server.ip}}}
---
apiVersion: clusterlink.net/v1alpha1
kind: Export
metadata: {{name: echo, namespace: default}}
spec: {{port: {ECHO_PORT}}}
""")
    west.wait_condition("Export", "echo", "ExportValid")
    show(west, "get", "exports")

    say("East imports it")
    apply(east, f"""
apiVersion: clusterlink.net/v1alpha1
kind: Import
metadata: {{name: echo, namespace: default}}
spec:
  port: {ECHO_PORT}
  sources: [{{peer: west, exportName: echo, exportNamespace: default}}]
""")
    vip = east.vip("echo")
    show(east, "get", "imports")

    say("Default deny: without policies the client's connection is refused")
    url = f"http://{vip}:{ECHO_PORT}/hello"
    out = client.http_get(url)
    print(f"$ curl {url}    # in pod east/client\n  {(out.stdout + out.stderr).strip()}")
    if out.returncode == 0:
        raise DemoFailed("the request succeeded without any policy (default deny is broken)")

    say("Allow policies on both sides")
    apply(east, ALLOW_ALL)
    apply(west, ALLOW_ALL)
    out = _retry_get(client, url, want_ok=True)
    print(f"$ curl {url}    # in pod east/client (VIP -> eBPF -> node agent -> gateway -> mTLS -> west)")
    print(textwrap.indent(out.stdout.strip(), "  "))
    if "west" not in out.stdout:
        raise DemoFailed(f"expected west's echo, got: {out.stdout!r} {out.stderr!r}")
    peername = client.workload("getpeername", "--host", vip, "--port", str(ECHO_PORT))
    print(f"  the client's socket still names the service: getpeername() = {peername.stdout.strip()}")

    say("A deny policy on east for this client and export: the same request is refused")
    apply(east, DENY_ECHO)
    out = _retry_get(client, url, want_ok=False)
    print(f"$ curl {url}    # in pod east/client\n  {(out.stdout + out.stderr).strip()}")

    say("Status")
    show(east, "get", "imports", "-o", "wide")
    show(east, "get", "accesspolicies")
    gw = east.metrics("gateway")
    decisions = [line for line in gw.splitlines() if line.startswith("clusterlink_gateway_authz_decisions_total")]
    print("east gateway metrics:\n" + textwrap.indent("\n".join(decisions) or "(none)", "  "))
    if keep:
        input(f"\nkept running (work dir {fab.workdir}); press Enter to tear down ")
    say("Tearing down")


def _retry_get(pod, url: str, *, want_ok: bool, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """Policies reach the gateways within a moment: retry until the expected outcome, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        out = pod.http_get(url, timeout=5)
        if (out.returncode == 0) == want_ok or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if (out.returncode == 0) != want_ok:
        raise DemoFailed(f"expected the request to {'succeed' if want_ok else 'fail'}; got exit {out.returncode}: "
                         f"{out.stdout.strip()} {out.stderr.strip()}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fabric.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="wait for Enter before tearing down")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo needs root (network namespaces, cgroups, BPF): run it as root", file=sys.stderr)
        return 1
    try:
        run_demo(keep=args.keep)
    except DemoFailed as exc:
        print(f"\nDEMO FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
