"""agent_hop's relay: the node agent's proxy (`agent.proxy.NodeProxy`, the same splice relay the agent
runs) as a process of its own, whose resolve sends every connection to one server without a preamble.

`python -m bench.splicehop --listen IP:PORT --upstream IP:PORT`; exits 0 on SIGTERM. Run in a
node's netns (like the agent); a pod connects to the listen address directly, so the eBPF connect4
redirect is not part of this hop (it costs only at connect(), not per byte: notes/feasibility.md §4).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from agent.proxy import NodeProxy, Upstream


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    target = Upstream(address=upstream, preamble=b"")

    async def resolve(client: tuple[str, int]) -> Upstream:
        return target

    proxy = NodeProxy(listen, resolve=resolve)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await proxy.start()
    try:
        print(f"bench-splicehop listening on {listen[0]}:{listen[1]} -> {upstream[0]}:{upstream[1]}", flush=True)
        await stop.wait()
    finally:
        await proxy.stop()
        m = proxy.metrics
        print(f"bench-splicehop stopped: {m.connections_accepted} accepted, {m.connections_completed} completed, "
              f"{m.connections_reset} reset, {m.connection_errors} errors", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.splicehop", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_host_port, required=True)
    parser.add_argument("--upstream", type=_host_port, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args.listen, args.upstream))
    return 0


if __name__ == "__main__":
    sys.exit(main())
