"""The committed generated protobuf modules match clusterlink.proto (regenerate with `make protos`)."""

from pathlib import Path

from controlplane.api import generate


def test_generated_modules_match_the_proto():
    here = Path(generate.__file__).parent
    for name, text in generate.generated_texts().items():
        assert (here / name).read_text() == text, f"{name} is stale: run `make protos`"
