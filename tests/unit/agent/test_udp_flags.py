"""The agent's UDP flags: defaults, off, and bad values refused with a clear error."""

from __future__ import annotations

import pytest

from agent.main import load_config
from agent.proxy.datagrams import DEFAULT_IDLE_TIMEOUT

BASE = ["--cgroup", "/sys/fs/cgroup/unified/x", "--proxy-address", "10.0.0.1"]


def test_udp_is_on_by_default_with_the_default_idle_timeout() -> None:
    config = load_config(BASE)
    assert config.udp is True and config.udp_idle_timeout == DEFAULT_IDLE_TIMEOUT == 30.0


def test_udp_off_and_another_idle_timeout() -> None:
    config = load_config([*BASE, "--udp", "off", "--udp-idle-timeout", "5"])
    assert config.udp is False and config.udp_idle_timeout == 5.0


@pytest.mark.parametrize("argv, message", [
    (["--udp-idle-timeout", "0"], "--udp-idle-timeout must be a positive number"),
    (["--udp", "maybe"], "invalid choice"),
])
def test_bad_udp_flags_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_config([*BASE, *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_proxy_address6_takes_an_ipv6_address_or_auto(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_config(BASE).proxy_address6 == ""
    assert load_config([*BASE, "--proxy-address6", "fdc1::1"]).proxy_address6 == "fdc1::1"
    assert load_config([*BASE, "--proxy-address6", "auto"]).proxy_address6 == "auto"
    with pytest.raises(SystemExit):
        load_config([*BASE, "--proxy-address6", "10.0.0.1"])
    assert "--proxy-address6 must be an IPv6 address or auto" in capsys.readouterr().err
