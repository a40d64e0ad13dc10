"""--event-loop: what each choice means, the errors, and that `run` really runs on that loop."""

from __future__ import annotations

import argparse
import asyncio
import os

import pytest

from controlplane.api import eventloop


async def _which() -> str:
    await asyncio.sleep(0)
    return eventloop.running_loop_name()


def test_each_choice_runs_on_its_loop() -> None:
    assert eventloop.uvloop_available()  # a project dependency: installed by make install
    assert eventloop.run(_which(), "uvloop") == "uvloop"
    assert eventloop.run(_which(), "asyncio") == "asyncio"
    assert eventloop.run(_which(), "auto") == "uvloop"


def test_auto_falls_back_and_uvloop_insists_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventloop, "uvloop_available", lambda: False)
    assert eventloop.resolve("auto") == "asyncio"
    assert eventloop.run(_which(), "auto") == "asyncio"
    with pytest.raises(ValueError, match="uvloop package is not installed"):
        eventloop.resolve("uvloop")
    coro = _which()
    with pytest.raises(ValueError):
        eventloop.run(coro, "uvloop")
    assert coro.cr_frame is None  # closed, never left un-awaited


def test_bad_choice_is_an_error() -> None:
    with pytest.raises(ValueError, match="must be one of auto, uvloop, asyncio"):
        eventloop.resolve("trio")


def test_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    eventloop.add_flag(parser)
    assert parser.parse_args([]).event_loop == "auto"
    assert parser.parse_args(["--event-loop", "asyncio"]).event_loop == "asyncio"
    with pytest.raises(SystemExit):
        parser.parse_args(["--event-loop", "nope"])
    monkeypatch.setenv("CLUSTERLINK_EVENT_LOOP", "asyncio")
    parser = argparse.ArgumentParser()
    eventloop.add_flag(parser)
    assert parser.parse_args([]).event_loop == "asyncio"
    assert "uvloop" in parser.format_help()


def test_a_profiled_run_writes_its_profile(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pstats

    async def work() -> int:
        await asyncio.sleep(0)
        return sum(range(1000))

    monkeypatch.setenv("CLUSTERLINK_PROFILE_DIR", str(tmp_path))
    assert eventloop.run(work(), "asyncio") == 499500
    (profile,) = tmp_path.glob("*.prof")
    assert profile.name.endswith(f"-{os.getpid()}.prof")
    stats = pstats.Stats(str(profile))
    assert any(name == "work" for (_, _, name) in stats.stats)  # type: ignore[attr-defined]


def test_without_the_variable_no_profile_is_written(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("CLUSTERLINK_PROFILE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)

    async def work() -> None:
        await asyncio.sleep(0)

    eventloop.run(work(), "asyncio")
    assert not list(tmp_path.glob("*.prof"))


def test_a_profile_directory_is_made_or_refused_before_anything_runs(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ran = []

    async def work() -> None:
        ran.append(True)

    made = tmp_path / "new" / "profiles"
    monkeypatch.setenv("CLUSTERLINK_PROFILE_DIR", str(made))
    eventloop.run(work(), "asyncio")
    assert ran == [True] and len(list(made.glob("*.prof"))) == 1
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("CLUSTERLINK_PROFILE_DIR", str(blocked / "profiles"))
    coro = work()
    with pytest.raises(ValueError, match="CLUSTERLINK_PROFILE_DIR=.*a-file/profiles"):
        eventloop.run(coro, "asyncio")
    assert ran == [True] and coro.cr_frame is None  # never ran, closed (no "never awaited" warning)
