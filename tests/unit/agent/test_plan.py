"""plan_services: which map each wanted redirect goes to, and the entries refused (pure)."""

from __future__ import annotations

import pytest

from agent.datapath.plan import IPPROTO_TCP as TCP
from agent.datapath.plan import IPPROTO_UDP as UDP
from agent.datapath.plan import plan_services


def test_entries_go_to_the_map_of_their_vips_family_and_protocol() -> None:
    plan = plan_services({("10.96.0.1", 80): ("10.0.0.9", 15001), ("fdc1:96:0::1", 80): ("fdc1::9", 15001),
                          ("fdc1:96::2", 81): ("10.0.0.9", 15001)},  # v4-mapped proxy for a VIP6
                         udp={("10.96.0.3", 53): ("10.0.0.9", 40001), ("fdc1:96::3", 53): ("fdc1::9", 40002)})
    assert plan.services == {("10.96.0.1", 80, TCP): ("10.0.0.9", 15001, TCP),
                             ("10.96.0.3", 53, UDP): ("10.0.0.9", 40001, UDP)}
    assert plan.services6 == {("fdc1:96::1", 80, TCP): ("fdc1::9", 15001, TCP),  # canonical text
                              ("fdc1:96::2", 81, TCP): ("10.0.0.9", 15001, TCP),
                              ("fdc1:96::3", 53, UDP): ("fdc1::9", 40002, UDP)}
    assert plan.udp_relays == {("10.0.0.9", 40001, UDP): ("10.96.0.3", 53, UDP)}
    assert plan.udp_relays6 == {("fdc1::9", 40002, UDP): ("fdc1:96::3", 53, UDP)}


def test_one_vip_port_may_carry_tcp_and_udp() -> None:
    plan = plan_services({("10.96.0.1", 5201): ("10.0.0.9", 15001)}, udp={("10.96.0.1", 5201): ("10.0.0.9", 40001)})
    assert set(plan.services) == {("10.96.0.1", 5201, TCP), ("10.96.0.1", 5201, UDP)}


@pytest.mark.parametrize("services, udp, message", [
    ({("10.96.0.1", 80): ("fdc1::9", 1)}, {}, "an IPv4 VIP cannot be redirected to the IPv6 address"),
    ({("10.96.0.300", 80): ("10.0.0.9", 1)}, {}, "is not an IPv4 address"),
    ({("fdc1::g", 80): ("10.0.0.9", 1)}, {}, "is not an IPv6 address"),
    ({("10.96.0.1", 0): ("10.0.0.9", 1)}, {}, "port must be an integer in 1..65535"),
    ({("10.96.0.1", 80): ("10.0.0.9", True)}, {}, "port must be an integer"),
    ({("10.96.0.1", 80): "10.0.0.9:1"}, {}, "expected (ip, port) -> (ip, port)"),
    ({(167772161, 80): ("10.0.0.9", 1)}, {}, "must be an IPv4 or IPv6 string"),
    ({}, {("10.96.0.1", 53): ("10.0.0.9", 4), ("fdc1::3", 53): ("10.0.0.9", 4)}, "share the relay"),
])
def test_bad_entries_are_refused_naming_them(services, udp, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as exc:
        plan_services(services, udp)
    assert message in str(exc.value)
