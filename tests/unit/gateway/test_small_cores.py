"""Peer health (local evidence over heartbeats), log throttling, configuration."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from controlplane.gateway.config import load_config
from controlplane.gateway.health import PeerHealth
from controlplane.gateway.logthrottle import LogThrottle
from controlplane.gateway.state import PeerView


def test_local_evidence_wins_over_heartbeats() -> None:
    changes = []
    health = PeerHealth(on_change=lambda peer, ok, reason: changes.append((peer, ok, reason)))
    up, down = PeerView("p", (), True), PeerView("p", (), False)
    assert not health.unreachable(up) and health.unreachable(down)  # not tried: heartbeats decide
    assert health.mark("p", False)
    assert health.unreachable(up)
    assert not health.mark("p", False)  # no change
    health.mark("p", True, "probe")
    assert not health.unreachable(down)
    health.forget("p")
    assert health.unreachable(down)
    assert changes == [("p", False, "connect"), ("p", True, "probe")]


def test_log_throttle(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    throttle = LogThrottle(logging.getLogger("t"), interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="t"):
        assert throttle.warning("k", "bad thing %d", 1)
        assert not throttle.warning("k", "bad thing %d", 2)
        assert not throttle.warning("k", "bad thing %d", 3)
        assert throttle.warning("other", "other thing")
        now[0] = 10.0
        assert throttle.warning("k", "bad thing %d", 4)
    assert [r.getMessage() for r in caplog.records] == [
        "bad thing 1", "other thing", "bad thing 4 (2 similar events in the last 10 s not logged)"]


class _FakeStream:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_admission_limit() -> None:
    from controlplane.gateway.listeners import Admission
    from controlplane.gateway.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    admission = Admission(2, metrics)
    a, b, c = _FakeStream(), _FakeStream(), _FakeStream()
    assert admission.admit("peer", a) and admission.admit("agent", b)  # type: ignore[arg-type]
    assert not admission.admit("peer", c) and c.aborted  # type: ignore[arg-type]
    assert metrics.registry.get_sample_value("clusterlink_gateway_refused_connections_total",
                                             {"listener": "peer", "reason": "max-connections"}) == 1
    admission.release(a)  # type: ignore[arg-type]
    assert admission.admit("peer", c)  # type: ignore[arg-type]
    assert admission.abort_all() == 2 and b.aborted


def test_config_from_flags_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTERLINK_POOL_SIZE", "7")
    monkeypatch.setenv("CLUSTERLINK_CONTROLPLANE", "unix:/run/cp.sock")
    config = load_config(["--certs", str(tmp_path), "--join-token-file", str(tmp_path / "t"),
                          "--workers", "3", "--max-connections", "10", "--metrics-listen", "off",
                          "--peer-listen", "127.0.0.1:8443"])
    assert config.pool_size == 7 and config.controlplane == "unix:/run/cp.sock"
    assert config.workers == 3 and config.connections_per_worker == 4
    assert config.metrics_listen is None and config.peer_listen == ("127.0.0.1", 8443)
    # every listener but the peer port is on loopback unless told otherwise (issue 10, item 4)
    assert config.agent_listen == ("127.0.0.1", 4443) and config.import_host == "127.0.0.1"
    assert load_config(["--certs", "c", "--controlplane", "x:1", "--join-token-file", "t"]).metrics_listen == \
        ("127.0.0.1", 9090)
    assert config.limits.max_body_bytes == 64 * 1024 and config.limits.liveness_timeout == 6.0
    assert not config.serve_unconfigured_peers
    assert not config.is_worker and config.event_loop == "auto"
    assert load_config(["--certs", "c", "--controlplane", "x:1", "--join-token-file", "t",
                        "--event-loop", "asyncio"]).event_loop == "asyncio"
    with pytest.raises(AttributeError):
        config.workers = 1  # type: ignore[misc]


@pytest.mark.parametrize("argv, message", [
    ([], "missing required setting(s): --certs"),
    (["--certs", "c", "--controlplane", "unix:/x", "--join-token-file", "t", "--controlplane-ca", "ca"],
     "--controlplane-ca is for a host:port"),
    (["--certs", "c", "--controlplane", "x:1", "--join-token-file", "t", "--idle-timeout", "5",
      "--pool-keepalive", "10"], "must be longer than --pool-keepalive"),
    (["--certs", "c", "--controlplane", "x:1", "--join-token-file", "t", "--event-loop", "trio"],
     "invalid choice: 'trio'"),
    (["--certs", "c", "--controlplane", "x:1", "--join-token-file", "t", "--workers", "0"], "not a positive"),
    (["--certs", "c", "--controlplane", "x:1", "--join-token-file", "t", "--tunnel-liveness-timeout", "2"],
     "--tunnel-liveness-timeout (2 s) must be at least 5"),
    (["--certs", "c", "--controlplane", "x:1", "--join-token-file", "t", "--unconfigured-peers", "yes"],
     "invalid choice: 'yes'"),
    (["--certs", "c", "--controlplane", "x:1", "--join-token-file", "t", "--pool-size", "8", "--pool-max-size", "4"],
     "--pool-max-size (4) must be at least --pool-size (8)"),
    (["--certs", "c", "--controlplane", "x:1", "--join-token-file", "t", "--pool-demand-window", "0"],
     "not a positive number"),
    (["--certs", "c", "--controlplane", "x:1", "--join-token-file", "t", "--peer-probe-interval", "-1"],
     "not zero or a positive number"),
    (["--certs", "c", "--controlplane", "x:1", "--join-token-file", "t", "--peer-probe-timeout", "6"],
     "--peer-probe-timeout (6 s) must not be longer than --response-timeout (5 s)"),
])
def test_config_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CLUSTERLINK_CERTS", "CLUSTERLINK_CONTROLPLANE", "CLUSTERLINK_JOIN_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit):
        load_config(argv)
    assert message in capsys.readouterr().err


def test_every_flag_is_documented() -> None:
    from controlplane.gateway.config import build_parser

    text = build_parser().format_help()
    for flag in ("--certs", "--controlplane", "--join-token-file", "--controlplane-ca", "--peer-listen",
                 "--agent-listen", "--import-host", "--workers", "--metrics-listen", "--token-lifetime",
                 "--pool-size", "--max-connections", "--event-loop", "--log-level", "--log-format",
                 "--unconfigured-peers", "--tunnel-liveness-timeout", "--max-requests-per-connection",
                 "--peer-probe-interval", "--peer-probe-timeout"):
        assert flag in text
    assert "--worker-index" not in text and "CLUSTERLINK_POOL_SIZE" in text


def test_client_attributes_in_a_log_line_are_sorted_printable_and_bounded() -> None:
    from controlplane.gateway.logthrottle import attributes

    assert attributes({"b": "2", "a": "1"}) == "a=1, b=2"
    assert attributes({}) == "none known"
    assert attributes({"x": "evil\nINFO forged line\x1b[31m"}) == "x=evil?INFO forged line?[31m"
    long = attributes({"k": "v" * 1000})
    assert len(long) == 303 and long.endswith("...")


def test_probe_verdicts_mark_a_peer_down_only_when_no_gateway_answers() -> None:
    from controlplane.gateway.health import judge_probes

    a, b = ("10.0.0.1", 443), ("10.0.0.2", 443)
    one_frozen = judge_probes({a: None, b: "no answer within 0.5 s"})
    assert one_frozen.peer_up and one_frozen.gateways_down == (b,) and one_frozen.gateways_up == (a,)
    none = judge_probes({a: "refused", b: "no answer"})
    assert not none.peer_up and none.gateways_down == () and none.gateways_up == ()
    single = judge_probes({a: "no answer"})  # one gateway: the peer is down, not the gateway alone
    assert not single.peer_up and single.gateways_down == ()
    assert judge_probes({a: None, b: None}) == judge_probes({a: None, b: None})
    assert judge_probes({a: None, b: None}).gateways_down == ()


def test_udp_idle_timeout_and_a_dual_stack_peer_port(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--certs", "c", "--controlplane", "x:1", "--join-token-file", "t"]
    assert load_config(base).limits.udp_idle_timeout == 60.0
    config = load_config([*base, "--udp-idle-timeout", "5", "--peer-listen", "[::]:443"])
    assert config.limits.udp_idle_timeout == 5.0 and config.peer_listen == ("::", 443)
    with pytest.raises(SystemExit):
        load_config([*base, "--udp-idle-timeout", "0"])
    assert "--udp-idle-timeout" in capsys.readouterr().err
