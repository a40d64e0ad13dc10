"""The container image's recipe (Containerfile) against the package and the chart: it parses, it
installs what the chart runs, and the names agree. (Building it needs its base image, which this
machine cannot download: `make image` does that where buildah and the registry are available.)"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import yaml

from controlplane.api import buildinfo

from tests.unit.chart.test_chart import VARIANTS, render

REPO = Path(__file__).resolve().parents[3]
INSTRUCTIONS = {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "LABEL", "CMD", "ENTRYPOINT",
                "EXPOSE", "VOLUME", "HEALTHCHECK", "STOPSIGNAL", "SHELL", "ONBUILD"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each logical line (continuations joined, comments dropped)."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "Containerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        word, _, rest = pending.partition(" ")
        out.append((word, rest.strip()))
        pending = ""
    assert not pending, "a continuation runs off the end of the Containerfile"
    return out


def test_the_containerfile_parses_into_known_instructions():
    parsed = instructions()
    assert all(word in INSTRUCTIONS for word, _ in parsed), [w for w, _ in parsed if w not in INSTRUCTIONS]
    stages = [rest for word, rest in parsed if word == "FROM"]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    final = parsed[max(i for i, (w, _) in enumerate(parsed) if w == "FROM"):]
    assert ("USER", "65532:65532") in final  # not root by default (the chart runs the agent as root)
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "PATH=/opt/clusterlink/bin:" in env
    run = " ".join(rest for word, rest in final if word == "RUN")
    assert "python3-bpfcc" in run and "clusterlink_bcc.pth" in run
    for word, rest in parsed:
        if word == "COPY" and "--from" not in rest:
            for source in rest.split()[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def test_the_image_provides_every_program_the_chart_runs():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    run_by_chart = set()
    for doc in render(VARIANTS["defaults"]):
        spec = (doc.get("spec") or {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            run_by_chart.add((container.get("command") or container["args"])[0])
    assert run_by_chart == {"clusterlink-controlplane", "clusterlink-gateway", "clusterlink-agent"}
    assert run_by_chart <= set(scripts)


def test_image_names_and_versions_agree():
    chart = yaml.safe_load((REPO / "charts/clusterlink/Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts/clusterlink/values.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "controlplane.api.buildinfo.VERSION"}
    version = buildinfo.VERSION
    assert chart["appVersion"] == version
    dry = subprocess.run(["make", "-n", "image"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert re.search(rf"buildah build .*-f Containerfile -t {re.escape(values['image']['repository'])}:"
                     rf"{re.escape(version)} \.", dry.stdout), dry.stdout
