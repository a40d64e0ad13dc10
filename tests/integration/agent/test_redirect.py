"""The eBPF redirect end to end: real programs in the kernel, a client in its own network namespace
and cgroup, the node proxy, and an upstream that shows what arrived."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys

import pytest

from agent.datapath import ReconcileResult, Redirect
from agent.proxy import NodeProxy
from tests.integration.agent import kit
from tests.integration.agent.conftest import RedirectEnv

pytestmark = pytest.mark.privileged


def test_redirected_client_reaches_proxy_sees_vip_and_is_identified(redirect_env: RedirectEnv,
                                                                    processes: kit.Processes) -> None:
    env = redirect_env
    vip = (kit.random_vip(), 80)
    seen: list = []

    async def scenario() -> dict:
        async with kit.tcp_server(kit.echo_upstream) as upstream, kit.proxy_for(env, [vip], seen, upstream) as proxy:
            report = await kit.run_client(processes, mode="echo", to=vip, netns=env.net.netns,
                                          cgroup=env.pod_a, send="hello through the VIP")
            assert proxy.metrics.connections_completed == 1
            return report

    report = asyncio.run(scenario())
    # The application sees the VIP as its peer, and the bytes went through the upstream.
    assert report["peer"] == list(vip)
    preamble, _, echoed = report["reply"].partition("|")
    assert echoed == "hello through the VIP"
    # The proxy found the record by the client's address: original destination and its cgroup.
    (client, redirect), = seen
    assert client == (env.net.client_ip, report["local"][1])
    pod_a_id = os.stat(env.pod_a).st_ino
    assert redirect == Redirect(orig_ip=vip[0], orig_port=vip[1], cgroup_id=pod_a_id)
    assert json.loads(preamble) == {"dst": f"{vip[0]}:{vip[1]}", "cgroup_id": pod_a_id,
                                    "cgroup": "/" + os.path.relpath(env.pod_a, kit.CGROUP2)}


def test_non_vip_tcp_and_udp_from_the_cgroup_are_untouched(redirect_env: RedirectEnv,
                                                           processes: kit.Processes) -> None:
    env = redirect_env
    vip = (kit.random_vip(), 443)
    seen: list = []

    async def direct_echo(conn) -> None:
        data = await kit.read_to_eof(conn)
        await asyncio.get_running_loop().sock_sendall(conn, b"direct:" + data)

    async def scenario() -> tuple[dict, dict, dict, tuple[str, int]]:
        async with kit.tcp_server(kit.echo_upstream) as upstream, kit.proxy_for(env, [vip], seen, upstream) as proxy, \
                kit.tcp_server(direct_echo, host=env.net.host_ip) as direct:
            tcp = await kit.run_client(processes, mode="echo", to=direct, netns=env.net.netns,
                                       cgroup=env.pod_a, send="plain")
            # Same VIP address, other port: not an imported service.
            other_port = await kit.run_client(processes, mode="echo", to=(vip[0], 444), netns=env.net.netns,
                                              cgroup=env.pod_a)
            udp = await kit.run_client(processes, mode="udp", to=vip, netns=env.net.netns, cgroup=env.pod_a)
            assert proxy.metrics.connections_accepted == 0
            return tcp, other_port, udp, direct

    tcp, other_port, udp, direct = asyncio.run(scenario())
    assert tcp["peer"] == list(direct) and tcp["reply"] == "direct:plain"
    assert other_port == {"connect_error": "EHOSTUNREACH"}  # the netns guard route, not the proxy
    assert udp == {"connect_error": "EHOSTUNREACH"}  # connect4 leaves UDP alone
    assert seen == []


def test_process_outside_the_cgroup_is_not_redirected(redirect_env: RedirectEnv,
                                                      processes: kit.Processes) -> None:
    env = redirect_env
    vip = (kit.random_vip(), 80)
    seen: list = []

    async def scenario() -> dict:
        async with kit.tcp_server(kit.echo_upstream) as upstream, kit.proxy_for(env, [vip], seen, upstream) as proxy:
            report = await kit.run_client(processes, mode="echo", to=vip, netns=env.net.netns, cgroup=None)
            assert proxy.metrics.connections_accepted == 0
            return report

    assert asyncio.run(scenario()) == {"connect_error": "EHOSTUNREACH"}
    assert seen == []


def test_reconcile_adds_updates_deletes_and_prunes(redirect_env: RedirectEnv, processes: kit.Processes) -> None:
    env = redirect_env
    dp = env.datapath
    v1, v2, v3 = (kit.random_vip(), 81), (kit.random_vip(), 82), (kit.random_vip(), 83)
    seen: list = []

    def tagged_upstream(tag: bytes):
        async def handler(conn) -> None:
            line, rest = await kit.read_line(conn)
            data = await kit.read_to_eof(conn, rest)
            await asyncio.get_running_loop().sock_sendall(conn, tag + data)
        return handler

    async def scenario() -> None:
        async with kit.tcp_server(tagged_upstream(b"one:")) as up1, \
                kit.tcp_server(tagged_upstream(b"two:")) as up2:
            p1 = NodeProxy((env.net.host_ip, 0), resolve=kit.redirect_resolver(dp, up1, seen))
            p2 = NodeProxy((env.net.host_ip, 0), resolve=kit.redirect_resolver(dp, up2, seen))
            await p1.start()
            await p2.start()
            try:
                assert dp.reconcile({}) == ReconcileResult(0, 0, 0)
                r = dp.reconcile({v1: p1.address, v2: p1.address})
                assert (r.added, r.updated, r.removed) == (2, 0, 0)
                assert dp.reconcile({v1: p1.address, v2: p1.address}) == ReconcileResult(0, 0, 0)

                async def via(vip):
                    return await kit.run_client(processes, mode="echo", to=vip, netns=env.net.netns,
                                                cgroup=env.pod_b, send="x")

                assert (await via(v1))["reply"] == "one:x"
                assert (await via(v2))["reply"] == "one:x"
                # v1 moves to the second proxy, v2 is pruned (absent from the desired state), v3 is new.
                r = dp.reconcile({v1: p2.address, v3: p2.address})
                assert (r.added, r.updated, r.removed) == (1, 1, 1)
                assert (await via(v1))["reply"] == "two:x"
                assert (await via(v3))["reply"] == "two:x"
                assert await via(v2) == {"connect_error": "EHOSTUNREACH"}
                # Invalid input is refused before the map is touched.
                with pytest.raises(ValueError, match="port must be an integer"):
                    dp.reconcile({v1: p1.address, (kit.random_vip(), 0): p1.address})
                with pytest.raises(ValueError, match="not-an-ip"):
                    dp.reconcile({("not-an-ip", 80): p1.address})
                assert (await via(v1))["reply"] == "two:x"
                r = dp.reconcile({})
                assert (r.added, r.updated, r.removed) == (0, 0, 2)
                assert await via(v1) == {"connect_error": "EHOSTUNREACH"}
                assert kit.map_entries(dp.map_ids()["cl_services"]) == []
            finally:
                await p1.stop()
                await p2.stop()

    asyncio.run(scenario())


def test_records_are_deleted_on_lookup_and_on_socket_release(redirect_env: RedirectEnv,
                                                              processes: kit.Processes) -> None:
    env = redirect_env
    dp = env.datapath
    vip = (kit.random_vip(), 8080)
    seen: list = []
    ids = dp.map_ids()

    async def scenario() -> None:
        async def hold_upstream(conn) -> None:
            await kit.read_to_eof(conn)

        async with kit.tcp_server(hold_upstream) as upstream, kit.proxy_for(env, [vip], seen, upstream) as proxy:
            proc = await kit.start_client(processes, mode="hold", to=vip, netns=env.net.netns, cgroup=env.pod_a,
                                          stdin=asyncio.subprocess.PIPE)
            connected = json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))
            assert connected["peer"] == list(vip)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
            (_, redirect), = seen
            assert redirect is not None
            # Looked up once: the tuple record is gone; the socket is open: its cookie record stays
            # (getpeername needs it).
            assert kit.map_entries(ids["cl_tuple_orig"]) == []
            assert len(kit.map_entries(ids["cl_cookie_orig"])) == 1
            assert dp.lookup(*seen[0][0]) is None
            proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 10)
            # sock_release removed the cookie record when the client closed its socket.
            assert kit.map_entries(ids["cl_cookie_orig"]) == []
            assert proxy.metrics.connections_accepted == 1

    asyncio.run(scenario())


def test_cgroup_path_for_id_resolves_new_cgroups_and_unknown_ids(redirect_env: RedirectEnv) -> None:
    env = redirect_env
    dp = env.datapath
    assert dp.cgroup_path_for_id(os.stat(env.pod_a).st_ino) == "/" + os.path.relpath(env.pod_a, kit.CGROUP2)
    assert dp.cgroup_path_for_id(os.stat(kit.CGROUP2).st_ino) == "/"
    late = os.path.join(env.root, "pod-late")
    os.mkdir(late)
    try:
        # Not in the cache yet: a miss rescans.
        assert dp.cgroup_path_for_id(os.stat(late).st_ino) == "/" + os.path.relpath(late, kit.CGROUP2)
    finally:
        os.rmdir(late)
    assert dp.cgroup_path_for_id(2**62 + 12345) is None


def test_lookup_of_an_unknown_client_is_none(redirect_env: RedirectEnv) -> None:
    assert redirect_env.datapath.lookup("192.0.2.200", 40000) is None
    with pytest.raises(ValueError):
        redirect_env.datapath.lookup("192.0.2.200", 70000)
    assert redirect_env.datapath.lookup("fdc1::200", 40000) is None  # IPv6 clients too (connect6)
    for bad in ("192.0.2", "192.0.2.300", " 192.0.2.1", "::g", "1::2::3", 3221225985):
        with pytest.raises(ValueError, match="client"):
            redirect_env.datapath.lookup(bad, 40000)  # type: ignore[arg-type]


@pytest.mark.slow
def test_one_gib_through_the_redirect_arrives_intact(redirect_env: RedirectEnv, processes: kit.Processes) -> None:
    env = redirect_env
    vip = (kit.random_vip(), 5201)
    size = 1 << 30
    seen: list = []

    async def scenario() -> tuple[dict, NodeProxy]:
        sink = await asyncio.create_subprocess_exec(sys.executable, kit.SINK_PROG, stdout=asyncio.subprocess.PIPE)
        processes.register(sink.pid)
        port = int((await asyncio.wait_for(sink.stdout.readline(), 10)).decode())
        async with kit.proxy_for(env, [vip], seen, ("127.0.0.1", port)) as proxy:
            report = await kit.run_client(processes, mode="bulk", to=vip, netns=env.net.netns, cgroup=env.pod_a,
                                          nbytes=size, timeout=120)
            await asyncio.wait_for(sink.wait(), 10)
            return report, proxy

    report, proxy = asyncio.run(scenario())
    received, digest, preamble = report["reply"].split(" ", 2)
    assert int(received) == size == report["sent"]
    assert digest == report["sha256"]
    assert json.loads(preamble)["dst"] == f"{vip[0]}:{vip[1]}"
    assert proxy.metrics.bytes_client_to_upstream == size
    print(f"1 GiB through VIP redirect + splice proxy: {size / report['seconds'] / 1e9:.2f} GB/s")


def _udp_relay(host: str) -> socket.socket:
    relay = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    relay.bind((host, 0))
    relay.setblocking(False)
    return relay


@pytest.mark.parametrize("mode", ["udp-connected", "udp-sendto"])
def test_udp_to_a_vip_reaches_its_relay_and_the_answer_comes_from_the_vip(redirect_env: RedirectEnv,
                                                                         processes: kit.Processes, mode: str) -> None:
    env = redirect_env
    vip = (kit.random_vip(), 53)
    relay = _udp_relay(env.net.host_ip)
    senders: list = []

    async def scenario() -> dict:
        loop = asyncio.get_running_loop()
        env.datapath.reconcile({}, udp={vip: relay.getsockname()})
        client = asyncio.ensure_future(kit.run_client(processes, mode=mode, to=vip, netns=env.net.netns,
                                                      cgroup=env.pod_a, send="question"))
        data, source = await asyncio.wait_for(loop.sock_recvfrom(relay, 65536), 20)
        senders.append((source, env.datapath.udp_sender(*source)))
        await loop.sock_sendto(relay, b"answer to " + data, source)
        return await client

    try:
        report = asyncio.run(scenario())
    finally:
        relay.close()
    assert report["reply"] == "answer to question"
    # The answer came from the relay, but the application sees the VIP: recvmsg4 (and getpeername4
    # for a connected socket).
    assert report["source"] == list(vip)
    assert report["peer"] == (list(vip) if mode == "udp-connected" else None)
    (source, sender), = senders
    assert source == (env.net.client_ip, report["local"][1])
    # egress.c recorded who sent: the VIP it asked and its cgroup.
    assert sender == Redirect(orig_ip=vip[0], orig_port=vip[1], cgroup_id=os.stat(env.pod_a).st_ino)
    assert env.datapath.forget_udp_sender(*source) is True
    assert env.datapath.udp_sender(*source) is None


def _ipv6_on_the_client_link(env: RedirectEnv) -> tuple[str, str]:
    """IPv6 on the veth between this namespace and the client's (removed with it), and the IPv6 VIP
    range unreachable in the client netns: (host address, client address)."""
    net = env.net
    host, client = f"fdc1:18:{random.randrange(1, 0xffff):x}::1", ""
    client = host[:-1] + "2"
    nsenter = ["nsenter", f"--net=/run/netns/{net.netns}", "--"]
    for argv in (["sysctl", "-q", "-w", f"net.ipv6.conf.{net.host_if}.disable_ipv6=0"],
                 ["ip", "addr", "add", f"{host}/64", "dev", net.host_if, "nodad"],
                 [*nsenter, "sysctl", "-q", "-w", f"net.ipv6.conf.{net.peer_if}.disable_ipv6=0"],
                 [*nsenter, "ip", "addr", "add", f"{client}/64", "dev", net.peer_if, "nodad"],
                 [*nsenter, "ip", "-6", "route", "replace", "unreachable", "fdc1:96::/64"]):
        subprocess.run(argv, check=True, capture_output=True)
    return host, client


@pytest.mark.parametrize("mode, relay_family", [("udp-connected", 4), ("udp-sendto", 6), ("udp-connected", 6)])
def test_udp_to_an_ipv6_vip_reaches_its_relay_and_answers_come_from_the_vip6(
        redirect_env: RedirectEnv, processes: kit.Processes, mode: str, relay_family: int) -> None:
    """A relay on the proxy's IPv6 address, or (connected sockets only: the kernel refuses a sendmsg6
    rewritten to a v4-mapped address) an IPv4 relay reached v4-mapped."""
    env = redirect_env
    vip6 = (f"fdc1:96::{random.randrange(1, 0xffff):x}", 53)
    if relay_family == 6:
        host6, client6 = _ipv6_on_the_client_link(env)
        relay = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        relay.bind((host6, 0))
        relay.setblocking(False)
    else:
        relay, client6 = _udp_relay(env.net.host_ip), ""
    senders: list = []

    async def scenario() -> dict:
        loop = asyncio.get_running_loop()
        env.datapath.reconcile({}, udp={vip6: relay.getsockname()[:2]})
        client = asyncio.ensure_future(kit.run_client(processes, mode=mode, to=vip6, netns=env.net.netns,
                                                      cgroup=env.pod_a, send="question six"))
        data, source = await asyncio.wait_for(loop.sock_recvfrom(relay, 65536), 20)
        senders.append((source[:2], env.datapath.udp_sender(*source[:2])))
        await loop.sock_sendto(relay, b"answer to " + data, source)
        return await client

    try:
        report = asyncio.run(scenario())
    finally:
        relay.close()
        env.datapath.reconcile({})
    assert report["reply"] == "answer to question six"
    assert report["source"] == list(vip6)  # recvmsg6: from the VIP6, not from the relay
    assert report["peer"] == (list(vip6) if mode == "udp-connected" else None)
    (source, sender), = senders
    # v4-mapped, the datagram left as IPv4 (an IPv4 sender); else from the client's IPv6 address
    assert source[0] == (client6 if relay_family == 6 else env.net.client_ip)
    assert sender is not None and sender.cgroup_id == os.stat(env.pod_a).st_ino
    assert env.datapath.forget_udp_sender(*source) is True


def test_udp_and_tcp_imports_of_one_vip_port_are_separate(redirect_env: RedirectEnv,
                                                          processes: kit.Processes) -> None:
    env = redirect_env
    vip = (kit.random_vip(), 5201)
    relay = _udp_relay(env.net.host_ip)
    try:
        assert env.datapath.reconcile({}, udp={vip: relay.getsockname()}).added == 1
        # TCP to the same VIP:port is not redirected while only UDP is imported there.
        tcp = asyncio.run(kit.run_client(processes, mode="echo", to=vip, netns=env.net.netns, cgroup=env.pod_a))
        assert tcp == {"connect_error": "EHOSTUNREACH"}
        # Dropping the UDP service removes its relay too: the datagram now meets the guard route.
        assert env.datapath.reconcile({}, udp={}) == ReconcileResult(0, 0, 1)
        udp = asyncio.run(kit.run_client(processes, mode="udp-connected", to=vip, netns=env.net.netns,
                                         cgroup=env.pod_a, send="x"))
        assert udp == {"connect_error": "EHOSTUNREACH"} or udp.get("error") in ("EHOSTUNREACH", "ECONNREFUSED")
        with pytest.raises(ValueError, match="share the relay"):
            env.datapath.reconcile({}, udp={vip: relay.getsockname(), (vip[0], 5202): relay.getsockname()})
    finally:
        relay.close()


def test_an_ipv6_vip_reaches_the_proxy_v4_mapped_and_the_client_sees_the_vip(redirect_env: RedirectEnv,
                                                                              processes: kit.Processes) -> None:
    """connect6 to a VIP6: the client netns has only IPv4 (a dual-stack pod's IPv4 side), so the
    proxy is reached as ::ffff:<its IPv4 address>; getpeername6 still says the VIP6."""
    env = redirect_env
    vip6 = (f"fdc1:96::{random.randrange(1, 0xffff):x}", 8080)
    seen: list = []

    async def scenario() -> dict:
        async with kit.tcp_server(kit.echo_upstream) as upstream:
            proxy = NodeProxy((env.net.host_ip, 0), resolve=kit.redirect_resolver(env.datapath, upstream, seen))
            await proxy.start()
            try:
                r = env.datapath.reconcile({vip6: proxy.address})
                assert r.added >= 1
                report = await kit.run_client(processes, mode="echo", to=vip6, netns=env.net.netns,
                                              cgroup=env.pod_a, send="over six")
                # Not redirected: another port of the same VIP6 (the client netns has no IPv6 route).
                other = await kit.run_client(processes, mode="echo", to=(vip6[0], 8081), netns=env.net.netns,
                                             cgroup=env.pod_a)
                assert other.get("connect_error") in ("ENETUNREACH", "EHOSTUNREACH", "EADDRNOTAVAIL"), other
                return report
            finally:
                await proxy.stop()
                env.datapath.reconcile({})

    report = asyncio.run(scenario())
    assert report["peer"] == list(vip6)
    preamble, _, echoed = report["reply"].partition("|")
    assert echoed == "over six"
    (client, redirect), = seen
    assert client == (env.net.client_ip, report["local"][1]) or client[0] == env.net.client_ip
    assert redirect == Redirect(orig_ip=vip6[0], orig_port=vip6[1], cgroup_id=os.stat(env.pod_a).st_ino)
    assert json.loads(preamble)["dst"] == f"{vip6[0]}:{vip6[1]}"
    with pytest.raises(ValueError, match="an IPv4 VIP cannot be redirected to the IPv6 address"):
        env.datapath.reconcile({("10.1.2.3", 80): ("fdc1::1", 1)})
