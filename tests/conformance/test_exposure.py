"""Only the peer port faces the WAN: from another peer's gateway (the WAN side), the Import target
ports (they take no credential), the agent port and the metrics ports of a peer are closed, while
the same ports answer on its LAN side."""

from __future__ import annotations

import sys

from fabric.peer import AGENT_PORT, CONTROLPLANE_METRICS, GATEWAY_METRICS, PEER_PORT

from .fabricutil import Access, allow_all, import_doc

# Connects to each (host, port) of argv and prints one word per address: open, refused or the error.
_PROBE = """
import socket, sys
for arg in sys.argv[1:]:
    host, port = arg.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print("open")
    except ConnectionRefusedError:
        print("refused")
    except OSError as exc:
        print(type(exc).__name__)
"""


def _probe(place, targets: list[tuple[str, int]]) -> list[str]:  # type: ignore[no-untyped-def]
    out = place.run([sys.executable, "-c", _PROBE, *[f"{h}:{p}" for h, p in targets]], timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_only_the_peer_port_answers_on_the_wan_side(clean):
    w = clean
    cl0, cl1 = w.peers["cl0"], w.peers["cl1"]
    cl0.apply(allow_all())
    cl1.apply(allow_all() + "---\n" + import_doc("echo", [("cl0", "echo")]))
    Access(w.fab, cl1, w.clients["cl1"], "echo", via="target-port").expect("cl0")  # the Import port is up
    target = cl1.target_port("echo")
    local_ports = [target, AGENT_PORT, GATEWAY_METRICS, CONTROLPLANE_METRICS]
    from_wan = _probe(cl0.net, [(cl1.wan_ip, PEER_PORT)] + [(cl1.wan_ip, p) for p in local_ports])
    assert from_wan == ["open"] + ["refused"] * len(local_ports), dict(zip([PEER_PORT, *local_ports], from_wan))
    from_lan = _probe(w.clients["cl1"], [(cl1.lan_ip, p) for p in local_ports])
    assert from_lan == ["open"] * len(local_ports), dict(zip(local_ports, from_lan))
