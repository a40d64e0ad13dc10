"""ClusterLink TestDynamicPeerCertificates: certificates swapped on disk are picked up without a
restart; a peer whose certificate comes from another fabric is refused until both sides move."""

from __future__ import annotations

import os
import shutil

import pytest

from controlplane import pki
from fabric.peer import ClusterLinkFabric

from .conftest import build_world
from .fabricutil import Access, allow_all, import_doc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fabric needs root (netns, cgroups, BPF)")


def swap_certs(peer, new_root) -> None:  # type: ignore[no-untyped-def]
    """Replace the peer's cert.pem/key.pem/ca.pem with ones issued by another fabric CA."""
    fresh = pki.create_peer_cert(new_root, peer.name, fabric="new_fabric")
    for name in ("ca.pem", "cert.pem", "key.pem"):
        tmp = peer.certs / f".{name}.new"
        shutil.copy2(fresh / name, tmp)
        os.replace(tmp, peer.certs / name)


def test_dynamic_peer_certificates(tmp_path):
    with ClusterLinkFabric() as fab:
        w = build_world(fab, ("cl0", "cl1"))
        cl0, cl1 = w.peers["cl0"], w.peers["cl1"]
        cl0.apply(allow_all())
        cl1.apply(allow_all() + "---\n" + import_doc("echo", [("cl0", "echo")]))
        access = Access(fab, cl1, w.clients["cl1"], "echo")
        access.expect("cl0")

        pki.create_fabric(tmp_path, "new_fabric")
        swap_certs(cl1, tmp_path)
        cl1.wait_condition("Peer", "cl0", "PeerReachable", "False", namespace="clusterlink-system", timeout=30)
        access.expect(None, timeout=20)

        swap_certs(cl0, tmp_path)
        cl1.wait_condition("Peer", "cl0", "PeerReachable", "True", namespace="clusterlink-system", timeout=40)
        access.expect("cl0", timeout=20)
