"""The wheel a user installs: built from a copy of the tree, installed in a fresh virtualenv, and
run from outside any source tree (the agent's BPF program lookup, `deploy peer --output` with
the packaged chart, `clusterlink version`). The fresh venv reuses this venv's dependencies
through a plain path entry (no downloads); the package itself comes only from the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
SKIP = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".hypothesis",
                              ".pytest_cache", "soak-report.json")


def run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{argv} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clwheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=SKIP)
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-q",
         "-w", str(root / "dist"), str(src)], cwd=root)
    (built,) = (root / "dist").glob("clusterlink-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clvenv")
    run([sys.executable, "-m", "venv", str(root / "venv")], cwd=root)
    py = root / "venv" / "bin" / "python"
    site = run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).strip()
    # Our dependencies from this venv, as a plain path: its .pth files (the editable install of
    # the source tree among them) are not processed there.
    Path(site, "cl_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=root)
    return root / "venv"


def test_the_wheel_holds_the_programs_and_the_chart_but_not_the_fabric(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    data = "clusterlink-0.1.0.data/data/share/clusterlink/"
    for source in ("connect4.c", "sockops.c", "getpeername4.c", "sock_release.c", "clusterlink.h"):
        assert f"{data}bpf/{source}" in names
    for chart_file in ("Chart.yaml", "values.yaml", "values.schema.json", "templates/gateway.yaml",
                       "templates/_helpers.tpl", "crds/clusterlink.net_imports.yaml", "files/dashboard.json"):
        assert f"{data}charts/clusterlink/{chart_file}" in names, chart_file
    assert not [n for n in names if n.startswith(("fabric/", "tests/", "bench/"))]
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)
    assert "controlplane/api/clusterlink.proto" in names


def test_the_installed_package_finds_its_programs_and_chart_outside_the_tree(venv: Path, tmp_path: Path) -> None:
    py, bindir = venv / "bin" / "python", venv / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTERLINK_", "PYTHON"))}
    probe = (
        "import json, importlib.util, agent\n"
        "from agent.datapath.programs import PROGRAMS, HEADER, default_bpf_dir\n"
        "d = default_bpf_dir()\n"
        "print(json.dumps({'agent': agent.__file__, 'dir': str(d),\n"
        "                  'missing': [p.source for p in PROGRAMS if not (d / p.source).exists()]\n"
        "                             + ([] if (d / HEADER).exists() else [HEADER]),\n"
        "                  'fabric': importlib.util.find_spec('fabric') is not None}))\n")
    found = json.loads(run([str(py), "-c", probe], cwd=tmp_path, env=env))
    assert found["agent"].startswith(str(venv)), found  # the wheel's code, not the source tree's
    assert found["dir"] == str(venv / "share" / "clusterlink" / "bpf") and found["missing"] == [], found
    assert not found["fabric"], "the test fabric must not be installed"

    clusterlink = str(bindir / "clusterlink")
    run([clusterlink, "create", "fabric"], cwd=tmp_path, env=env)
    run([clusterlink, "create", "peer-cert", "--name", "p1"], cwd=tmp_path, env=env)
    run([clusterlink, "deploy", "peer", "--name", "p1", "--output", "all.yaml"], cwd=tmp_path, env=env)
    kinds = [d["kind"] for d in yaml.safe_load_all((tmp_path / "all.yaml").read_text()) if d]
    assert {"Deployment", "DaemonSet", "CustomResourceDefinition", "Secret"} <= set(kinds)
    assert run([clusterlink, "version"], cwd=tmp_path, env=env).startswith("clusterlink 0.1.0\n")
