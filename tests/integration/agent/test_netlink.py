"""agent.netlink against the real kernel: AddressManager owns only what it added; Plumbing removes
everything it created."""

from __future__ import annotations

import subprocess

import pytest

from agent.netlink import AddressManager, NetworkSetupError, Plumbing, ipv6_beside
from tests.integration.agent import kit
from tests.integration.agent.conftest import require_privileges

pytestmark = pytest.mark.privileged


def addresses(ifname: str, netns: str | None = None) -> list[str]:
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-4", "-o", "addr", "show", "dev", ifname]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines()]


@pytest.fixture
def veth() -> str:
    require_privileges()
    name = kit.new_id()
    plumbing = Plumbing()
    try:
        plumbing.add_veth(f"{name}a", f"{name}b")
        plumbing.set_up(f"{name}a")
        plumbing.add_address(f"{name}a", "198.19.250.1/30")  # present before the manager: not its own
        yield f"{name}a"
    finally:
        plumbing.cleanup()


def test_address_manager_removes_only_what_it_added(veth: str) -> None:
    manager = AddressManager()
    assert manager.ensure(veth, "198.19.250.1") is False  # already there (other prefix length)
    assert manager.ensure(veth, "198.19.251.7", 32) is True
    assert manager.ensure(veth, "198.19.251.7", 32) is False  # idempotent
    assert sorted(addresses(veth)) == ["198.19.250.1/30", "198.19.251.7/32"]
    assert manager.added == [(veth, "198.19.251.7", 32)]
    manager.stop()
    assert addresses(veth) == ["198.19.250.1/30"]
    manager.stop()  # idempotent


def test_address_manager_errors_name_the_interface(veth: str) -> None:
    manager = AddressManager()
    with pytest.raises(NetworkSetupError, match="interface clnope0 does not exist"):
        manager.ensure("clnope0", "198.19.251.8")
    with pytest.raises(ValueError):
        manager.ensure(veth, "300.1.1.1")


def test_plumbing_cleanup_removes_namespaces_links_and_routes() -> None:
    require_privileges()
    name = kit.new_id()
    plumbing = Plumbing()
    try:
        plumbing.add_netns(f"{name}n")
        plumbing.add_route(kit.VIP_GUARD, unreachable=True, netns=f"{name}n")
        plumbing.add_veth(f"{name}x", f"{name}y", peer_netns=f"{name}n")
        plumbing.add_address(f"{name}y", "198.19.252.2/30", netns=f"{name}n")
        plumbing.set_up(f"{name}y", netns=f"{name}n")
        routes = subprocess.run(["ip", "-n", f"{name}n", "route", "show", kit.VIP_GUARD],
                                capture_output=True, text=True, check=True).stdout
        assert routes.startswith("unreachable 10.96.0.0/12")
        assert addresses(f"{name}y", f"{name}n") == ["198.19.252.2/30"]
        with pytest.raises(NetworkSetupError, match=f"network namespace {name}n already exists"):
            plumbing.add_netns(f"{name}n")
        with pytest.raises(ValueError, match="must be 1..15 characters"):
            plumbing.add_veth("cl-this-name-is-too-long", "clpeer")
    finally:
        plumbing.cleanup()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"{name}n" not in netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert f"{name}x" not in links
    plumbing.cleanup()  # idempotent


def test_ipv6_beside_finds_the_global_ipv6_address_of_the_proxys_interface(veth: str) -> None:
    assert ipv6_beside("198.19.250.1") is None  # no IPv6 on it yet (a link-local at most)
    subprocess.run(["sysctl", "-q", "-w", f"net.ipv6.conf.{veth}.disable_ipv6=0"], check=True)
    subprocess.run(["ip", "addr", "add", "fe80::99/64", "dev", veth, "nodad"], check=True)
    subprocess.run(["ip", "addr", "add", "fdc1:19::7/64", "dev", veth, "nodad"], check=True)
    assert ipv6_beside("198.19.250.1") == "fdc1:19::7"
    assert ipv6_beside("198.19.250.99") is None  # no interface holds that address
    with pytest.raises(ValueError):
        ipv6_beside("fdc1:19::7")
