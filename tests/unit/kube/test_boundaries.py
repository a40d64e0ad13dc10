"""One adapter per outside library: the kubernetes client is imported by exactly two small wrappers,
the control plane's (controlplane/store/kubeapi.py) and the agent's (agent/kube/podapi.py)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
WRAPPERS = {"controlplane/store/kubeapi.py", "agent/kube/podapi.py"}


def imports_kubernetes(path: Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "kubernetes" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "kubernetes":
            return True
    return False


def test_only_the_wrappers_import_the_kubernetes_client():
    found = {str(p.relative_to(ROOT)) for package in ("controlplane", "agent", "fabric")
             for p in (ROOT / package).rglob("*.py") if imports_kubernetes(p)}
    assert found == WRAPPERS
