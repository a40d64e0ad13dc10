"""Fixtures: a fabric with two peers (and a second, unrelated fabric) written by controlplane.pki."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane import pki


@dataclass(frozen=True)
class Fabric:
    root: Path
    name: str

    def peer_dir(self, peer: str) -> Path:
        return self.root / self.name / peer

    def add_peer(self, peer: str, **kwargs) -> Path:
        return pki.create_peer_cert(self.root, peer, fabric=self.name, **kwargs)


@pytest.fixture
def fabric(tmp_path: Path) -> Fabric:
    """default_fabric with peers peer-a and peer-b."""
    pki.create_fabric(tmp_path)
    fab = Fabric(tmp_path, pki.DEFAULT_FABRIC)
    fab.add_peer("peer-a")
    fab.add_peer("peer-b")
    return fab


@pytest.fixture
def other_fabric(tmp_path: Path) -> Fabric:
    """A second fabric (its own CA) that also has peers named peer-a and peer-b."""
    pki.create_fabric(tmp_path, "other_fabric")
    fab = Fabric(tmp_path, "other_fabric")
    fab.add_peer("peer-a")
    fab.add_peer("peer-b")
    return fab
