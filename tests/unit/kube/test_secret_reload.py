"""Peer certificates from a mounted Secret are hot-reloaded: the kubelet updates a Secret volume by
writing a new timestamped directory and swapping the `..data` symlink, and the key files are
symlinks through it. The control plane's and the gateway's `PeerTLS` must pick the new files up."""

import os
from pathlib import Path

from controlplane import pki
from controlplane.tlsconfig import PeerTLS


def kubelet_write(volume: Path, files: dict[str, bytes], generation: int) -> None:
    """What the kubelet's atomic writer does for a Secret volume."""
    data = volume / f"..2024_01_01_00_00_0{generation}.000000000"
    data.mkdir()
    for name, content in files.items():
        (data / name).write_bytes(content)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, volume / "..data")
    for name in files:
        link = volume / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def peer_files(tmp_path: Path, name: str, serial_dir: str) -> dict[str, bytes]:
    ca = pki.new_fabric_ca("fabric")
    peer = pki.issue_peer_cert(ca, name)
    directory = pki.write_peer_dir(tmp_path / serial_dir, peer, ca.cert)
    return {f: (directory / f).read_bytes() for f in (pki.CERT_FILE, pki.KEY_FILE, pki.CA_FILE)}


def test_peer_tls_reloads_a_secret_volume_update(tmp_path):
    volume = tmp_path / "certs"
    volume.mkdir()
    first = peer_files(tmp_path, "peer1", "a")
    kubelet_write(volume, first, 1)
    tls = PeerTLS(volume, expected_name="peer1")
    serial = tls.identity.serial
    assert not tls.reload_if_changed()

    second = peer_files(tmp_path, "peer1", "b")  # renewed: a new fabric CA and certificate
    kubelet_write(volume, second, 2)
    assert tls.reload_if_changed()
    assert tls.identity.serial != serial and tls.name == "peer1"
    assert not tls.reload_if_changed()
