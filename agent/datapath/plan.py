"""The desired content of the services maps, as a pure function of what the agent wants redirected
(no kernel, no I/O): `plan_services` validates every entry and sorts it into the map its VIP's
family and protocol need.

    IPv4 VIP  -> cl_services  (and, for UDP, cl_udp_relays: relay -> VIP)
    IPv6 VIP  -> cl_services6 (and, for UDP, cl_udp_relays6), the target IPv6 or IPv4 (v4-mapped)

Keys and values are (ip, port, proto) triples, IPv6 text in the form the maps give back.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

IPPROTO_TCP = 6
IPPROTO_UDP = 17

Triple = tuple[str, int, int]
Entries = Mapping[tuple[str, int], tuple[str, int]]


@dataclass
class ServicePlan:
    services: dict[Triple, Triple] = field(default_factory=dict)
    udp_relays: dict[Triple, Triple] = field(default_factory=dict)
    services6: dict[Triple, Triple] = field(default_factory=dict)
    udp_relays6: dict[Triple, Triple] = field(default_factory=dict)


def family_of(ip: object, what: str) -> int:
    """AF_INET or AF_INET6 for a strict address text; ValueError naming `what` otherwise."""
    if not isinstance(ip, str):
        raise ValueError(f"{what}: address must be an IPv4 or IPv6 string, not {ip!r}")
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        socket.inet_pton(family, ip)  # strict: a.b.c.d, or IPv6 text
    except OSError:
        kind = "an IPv6 address" if family == socket.AF_INET6 else "an IPv4 address (a.b.c.d)"
        raise ValueError(f"{what}: {ip!r} is not {kind}") from None
    return family


def check_port(port: object, what: str) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"{what}: port must be an integer in 1..65535, not {port!r}")


def canonical(ip: str) -> str:
    """IPv6 compressed (as the maps give it back); IPv4 as is."""
    return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, ip)) if ":" in ip else ip


def plan_services(services: Entries, udp: Entries | None = None) -> ServicePlan:
    """`services`: TCP (VIP, port) -> (proxy ip, port); `udp`: (VIP, port) -> (relay ip, port), one
    relay per service. ValueError names the first bad entry (nothing is half-planned)."""
    plan = ServicePlan()
    for proto, entries in ((IPPROTO_TCP, services), (IPPROTO_UDP, udp or {})):
        for key, value in entries.items():
            if not (isinstance(key, tuple) and len(key) == 2 and isinstance(value, tuple) and len(value) == 2):
                raise ValueError(f"service entry {key!r} -> {value!r}: expected (ip, port) -> (ip, port)")
            vip_family = family_of(key[0], f"service {key!r}")
            check_port(key[1], f"service {key!r}")
            target_family = family_of(value[0], f"proxy address of service {key!r}")
            check_port(value[1], f"proxy address of service {key!r}")
            if vip_family == socket.AF_INET and target_family == socket.AF_INET6:
                raise ValueError(f"service {key!r}: an IPv4 VIP cannot be redirected to the IPv6 address {value[0]!r}")
            vip, target = (canonical(key[0]), key[1], proto), (canonical(value[0]), value[1], proto)
            v6 = vip_family == socket.AF_INET6
            (plan.services6 if v6 else plan.services)[vip] = target
            if proto == IPPROTO_UDP:
                if target in plan.udp_relays or target in plan.udp_relays6:
                    other = (plan.udp_relays.get(target) or plan.udp_relays6[target])[:2]
                    raise ValueError(f"UDP services {other!r} and {key!r} share the relay {value!r}: "
                                     "each UDP service needs its own relay socket")
                (plan.udp_relays6 if v6 else plan.udp_relays)[target] = vip
    return plan
