"""`clusterlink create fabric` / `create peer-cert` end to end, then a real mTLS connection with the result."""

from __future__ import annotations

import argparse
import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from controlplane import pki
from controlplane.cli.main import build_parser, main
from controlplane.tlsconfig import PeerTLS
from tests.integration.tls.tlspeers import IdentityServer, exchange


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_fabric_and_peers_then_connect(tmp_path, capsys):
    code, out, err = run(capsys, "create", "fabric", "--path", str(tmp_path))
    assert (code, err) == (0, "")
    assert str(tmp_path / "default_fabric" / "cert.pem") in out
    for peer in ("peer-a", "peer-b"):
        code, out, err = run(capsys, "create", "peer-cert", "--name", peer, "--path", str(tmp_path))
        assert (code, err) == (0, "")
        for name in ("cert.pem", "key.pem", "ca.pem"):
            assert str(tmp_path / "default_fabric" / peer / name) in out
    key = tmp_path / "default_fabric" / "peer-a" / "key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    server_tls = PeerTLS(tmp_path / "default_fabric" / "peer-a")
    client_tls = PeerTLS(tmp_path / "default_fabric" / "peer-b")

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            return await exchange(client_tls.client_context(), server.port, "peer-a")

    reply, saw, _ = asyncio.run(scenario())
    assert (reply, saw.peer) == (b"peer-b\n", "peer-a")


def test_named_fabric_and_days(tmp_path, capsys):
    assert run(capsys, "create", "fabric", "--name", "prod", "--path", str(tmp_path))[0] == 0
    code, out, _ = run(capsys, "create", "peer-cert", "--name", "eu.example.com", "--fabric", "prod",
                       "--path", str(tmp_path), "--days", "30")
    assert code == 0
    identity = pki.load_peer_identity(tmp_path / "prod" / "eu.example.com")
    assert identity.name == "eu.example.com"
    assert identity.not_after.strftime("%Y-%m-%d") in out


def test_existing_files_are_refused_unless_forced(tmp_path, capsys):
    run(capsys, "create", "fabric", "--path", str(tmp_path))
    code, out, err = run(capsys, "create", "fabric", "--path", str(tmp_path))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("clusterlink: error: refusing to overwrite")
    assert "--force" in err

    run(capsys, "create", "peer-cert", "--name", "peer-a", "--path", str(tmp_path))
    first = pki.load_peer_identity(tmp_path / "default_fabric" / "peer-a").serial
    code, _, err = run(capsys, "create", "peer-cert", "--name", "peer-a", "--path", str(tmp_path))
    assert code == 1 and "refusing to overwrite" in err
    code, _, _ = run(capsys, "create", "peer-cert", "--name", "peer-a", "--path", str(tmp_path), "--force")
    assert code == 0
    assert pki.load_peer_identity(tmp_path / "default_fabric" / "peer-a").serial != first


def test_missing_fabric_says_what_to_run(tmp_path, capsys):
    code, out, err = run(capsys, "create", "peer-cert", "--name", "peer-a", "--fabric", "x", "--path", str(tmp_path))
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert "fabric 'x' not found at" in err
    assert "run `clusterlink create fabric --name x" in err


@pytest.mark.parametrize("name", ["Peer-A", "peer_a", "-peer", "a..b", "x" * 64])
def test_bad_peer_name_is_refused(tmp_path, capsys, name):
    run(capsys, "create", "fabric", "--path", str(tmp_path))
    code, out, err = run(capsys, "create", "peer-cert", f"--name={name}", "--path", str(tmp_path))
    assert code == 1 and out == ""
    assert err.startswith("clusterlink: error: invalid peer name") and err.count("\n") == 1
    assert not (tmp_path / "default_fabric" / name).exists()


def test_garbage_fabric_key_is_reported(tmp_path, capsys):
    run(capsys, "create", "fabric", "--path", str(tmp_path))
    (tmp_path / "default_fabric" / "key.pem").write_text("garbage")
    code, _, err = run(capsys, "create", "peer-cert", "--name", "peer-a", "--path", str(tmp_path))
    assert code == 1 and "key.pem is not a valid PEM private key" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["create", "peer-cert"],  # --name is required
        ["create"],
        [],
        ["create", "fabric", "--days", "soon"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage: clusterlink" in err


@pytest.mark.parametrize(
    "argv, flags",
    [
        ([], ["--version"]),
        (["create"], []),
        (["create", "fabric"], ["--name", "--path", "--days", "--force"]),
        (["create", "peer-cert"], ["--name", "--fabric", "--path", "--days", "--force"]),
    ],
)
def test_help_documents_every_flag(capsys, argv, flags):
    code, out, _ = run(capsys, *argv, "--help")
    assert code == 0
    for flag in flags:
        assert flag in out
    # Every option of every parser has a help text.
    parser = build_parser()
    for action in _all_actions(parser):
        assert action.help, f"{action.option_strings or action.dest} has no help"


def _all_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                yield from _all_actions(subparser)


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("clusterlink ")


def test_a_bad_ca_file_is_one_clear_line_without_grpc_noise(tmp_path):
    """grpc's C core used to print four lines of its own about root certificates before our error."""
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "CLUSTERLINK_"))}
    env["CLUSTERLINK_TOKEN"] = "x"
    out = subprocess.run([str(Path(sys.executable).parent / "clusterlink"), "get", "imports", "--controlplane",
                          "127.0.0.1:1", "--ca", str(bad)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"clusterlink: error: the CA file {bad} holds no PEM certificate"]


def test_an_internal_error_is_one_line_not_a_traceback(capsys, monkeypatch):
    from controlplane.cli import objects

    def broken(args):  # type: ignore[no-untyped-def]
        raise KeyError("surprise")

    monkeypatch.setattr(objects, "cmd_get", broken)
    monkeypatch.delenv("CLUSTERLINK_DEBUG", raising=False)
    assert main(["get", "imports"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("clusterlink: internal error: KeyError: 'surprise'") and "Traceback" not in err
    monkeypatch.setenv("CLUSTERLINK_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["get", "imports"])


def test_link_writes_the_peer_the_other_side_applies(tmp_path, capsys, monkeypatch):
    from controlplane.model.objects import parse_documents

    monkeypatch.chdir(tmp_path)
    assert main(["create", "fabric"]) == 0
    assert main(["create", "peer-cert", "--name", "east"]) == 0
    capsys.readouterr()
    assert main(["link", "--name", "east", "--gateway", "203.0.113.7", "--gateway", "east.example.com:30443"]) == 0
    (peer,) = parse_documents(capsys.readouterr().out)
    assert (peer.kind, peer.name, peer.namespace) == ("Peer", "east", "clusterlink-system")
    assert peer.spec["gateways"] == [{"host": "203.0.113.7", "port": 443}, {"host": "east.example.com", "port": 30443}]
    # from a deployment: the name and the NodePort from the values file of `deploy peer`
    values = tmp_path / "values.yaml"
    values.write_text("peer: {name: east}\ngateway: {service: {type: NodePort, nodePort: 31443}}\n")
    assert main(["link", "--values", str(values), "--gateway", "10.0.0.5", "-o", "peer.yaml"]) == 0
    (peer,) = parse_documents((tmp_path / "peer.yaml").read_text())
    assert peer.spec["gateways"] == [{"host": "10.0.0.5", "port": 31443}]


@pytest.mark.parametrize("argv, message", [
    (["link", "--name", "east", "--gateway", "h"], "does not exist"),  # no certificate directory
    (["link", "--name", "east"], "at least one --gateway"),
    (["link", "--gateway", "h"], "link needs --name"),
])
def test_link_errors_are_clear(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_link_refuses_a_bad_gateway(capsys):
    assert main(["link", "--name", "east", "--gateway", "h:99999"]) == 2
    assert "is not HOST[:PORT]" in capsys.readouterr().err


def test_bash_completion_completes_commands_and_flags(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr

    def complete(*words: str) -> list[str]:
        line = " ".join(["clusterlink", *words])
        driver = (script + f'\nCOMP_WORDS=(clusterlink {" ".join(words)}); COMP_CWORD={len(words)}\n'
                  '_clusterlink; printf "%s\\n" "${COMPREPLY[@]}"\n')
        out = subprocess.run(["bash", "-c", driver], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, (line, out.stderr)
        return out.stdout.split()

    assert {"apply", "delete", "deploy", "diagnose", "link", "status", "completion"} <= set(complete(""))
    assert complete("de") == ["delete", "deploy"]
    assert "--wait" in complete("apply", "--") and "--filename" in complete("apply", "--")
    assert [w for w in complete("create", "") if not w.startswith("-")] == ["fabric", "peer-cert"]
    assert "--force" in complete("create", "fabric", "--f")
