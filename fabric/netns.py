"""Network namespaces and links, through `ip`, `sysctl` and `nsenter` (never `ip netns exec`, which hides /sys)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from fabric.commands import command

NETNS_DIR = Path("/run/netns")


def nsenter_argv(netns: str) -> list[str]:
    """The prefix that runs a program in `netns` while keeping this mount namespace (so /sys/fs/cgroup)."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--"]


def exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def names(prefix: str = "") -> list[str]:
    """Names of the named network namespaces starting with `prefix`."""
    found = []
    for line in command(["ip", "netns", "list"]).splitlines():
        name = line.split(" ", 1)[0].strip()
        if name and name.startswith(prefix):
            found.append(name)
    return found


def add(netns: str) -> None:
    command(["ip", "netns", "add", netns])


def delete(netns: str) -> None:
    command(["ip", "netns", "delete", netns])


def pids(netns: str) -> list[int]:
    """Processes whose network namespace is `netns`."""
    return [int(p) for p in command(["ip", "netns", "pids", netns]).split()]


def ip_batch(netns: str | None, lines: Iterable[str]) -> None:
    """Run several `ip` commands (one per line, without the leading `ip`) in `netns`, stopping at the first error."""
    script = "\n".join(lines) + "\n"
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    command(argv, input=script)


def sysctl(netns: str, settings: Mapping[str, str | int]) -> None:
    """Set sysctls inside `netns` (net.* sysctls are per network namespace)."""
    command(nsenter_argv(netns) + ["sysctl", "-q", "-w"] + [f"{k}={v}" for k, v in settings.items()])


def nft(netns: str, ruleset: str) -> None:
    """Load an nftables ruleset (`nft -f` syntax) into `netns`."""
    command(nsenter_argv(netns) + ["nft", "-f", "-"], input=ruleset)


def add_veth(name: str, netns: str, peer_name: str, peer_netns: str) -> None:
    """A veth pair created directly in its two namespaces: it never appears in the root namespace."""
    command(["ip", "link", "add", name, "netns", netns, "type", "veth", "peer", "name", peer_name, "netns", peer_netns])


def links(netns: str | None = None, prefix: str = "") -> list[str]:
    """Link names in `netns` (None: the root namespace) starting with `prefix`."""
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-o", "link", "show"]
    found = []
    for line in command(argv).splitlines():
        # "7: name@if6: <...> ..." ; the name ends at "@" (veth peer) or ":".
        name = line.split(": ", 2)[1].split("@", 1)[0]
        if name.startswith(prefix):
            found.append(name)
    return found


def delete_link(name: str, netns: str | None = None) -> None:
    command(["ip"] + (["-n", netns] if netns else []) + ["link", "delete", name])


def inode(netns: str) -> int:
    """The namespace's inode, to compare with /proc/<pid>/ns/net."""
    return (NETNS_DIR / netns).stat().st_ino
