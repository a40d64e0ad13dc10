"""Generate the gRPC/protobuf modules from clusterlink.proto (`make protos`).

The generated files are committed; `tests/unit/api/test_proto_drift.py` regenerates them into a
temporary directory and fails when they differ from the committed ones.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "clusterlink.proto"
OUTPUTS = ("clusterlink_pb2.py", "clusterlink_pb2_grpc.py", "clusterlink_pb2.pyi")


def generate(out_dir: Path) -> None:
    """Run grpc_tools.protoc on the proto, writing the three modules into out_dir."""
    from grpc_tools import protoc  # imported lazily: only needed at development time

    args = [
        "protoc",
        f"-I{HERE}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(HERE / PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {HERE / PROTO}")
    grpc_file = out_dir / "clusterlink_pb2_grpc.py"
    # protoc writes an absolute-style import; make it relative to this package.
    text = grpc_file.read_text()
    text = text.replace("import clusterlink_pb2 as clusterlink__pb2", "from . import clusterlink_pb2 as clusterlink__pb2")
    grpc_file.write_text(text)


def generated_texts() -> dict[str, str]:
    """The generated modules as they would be written now (used by the drift test)."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        return {name: (Path(tmp) / name).read_text() for name in OUTPUTS}


def main() -> int:
    generate(HERE)
    print(f"generated {', '.join(OUTPUTS)} in {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
