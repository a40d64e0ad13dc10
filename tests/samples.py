"""Where the manifests written for the original ClusterLink live in this repository.

`tests/data/clusterlink-samples/` is a verbatim copy of the original project's demo manifests
(bookinfo, iperf3); our CRDs and `clusterlink apply -f` must accept every one of them unchanged
(after filling their `${...}` placeholders, as their users do with envsubst).
"""

from __future__ import annotations

import re
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent / "data" / "clusterlink-samples"
SAMPLE_FILES = sorted(SAMPLES.glob("*/*.yaml"))


def envsubst(text: str, value: str = "192.0.2.10") -> str:
    """Fill every ${VAR} the way `envsubst` would with VAR set to `value`."""
    return re.sub(r"\$\{\w+\}", value, text)
