"""Flags with CLUSTERLINK_* environment fallbacks."""

import argparse

import pytest

from controlplane.api import flags


def parser(monkeypatch, env):  # type: ignore[no-untyped-def]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    p = argparse.ArgumentParser(prog="t")
    flags.add(p, "--peer-label", action="append", type=flags.label, default=[], help="labels")
    flags.add(p, "--probe-timeout", type=float, default=3.0, help="timeout")
    flags.add(p, "--name", default="x", help="name")
    return p


def test_defaults_flags_and_environment(monkeypatch):
    assert parser(monkeypatch, {}).parse_args([]).probe_timeout == 3.0
    a = parser(monkeypatch, {"CLUSTERLINK_PROBE_TIMEOUT": "1.5", "CLUSTERLINK_NAME": "east",
                             "CLUSTERLINK_PEER_LABEL": "region=east, tier=gold"}).parse_args([])
    assert a.probe_timeout == 1.5 and a.name == "east"
    assert dict(a.peer_label) == {"region": "east", "tier": "gold"}
    assert parser(monkeypatch, {"CLUSTERLINK_NAME": "east"}).parse_args(["--name", "west"]).name == "west"


@pytest.mark.parametrize("env", [{"CLUSTERLINK_PROBE_TIMEOUT": "soon"}, {"CLUSTERLINK_PEER_LABEL": "novalue"}])
def test_bad_environment_is_a_usage_error_naming_the_variable(monkeypatch, capsys, env):
    with pytest.raises(SystemExit) as exc:
        parser(monkeypatch, env)
    assert exc.value.code == 2
    assert next(iter(env)) in capsys.readouterr().err


def test_host_port():
    assert flags.host_port("0.0.0.0:443") == ("0.0.0.0", 443)
    assert flags.host_port("[::1]:9090") == ("::1", 9090)
    with pytest.raises(argparse.ArgumentTypeError):
        flags.host_port("nope")
