"""`clusterlink create fabric` and `clusterlink create peer-cert`: the fabric CA and peer certificates."""

from __future__ import annotations

import argparse
from pathlib import Path

from controlplane import pki
from controlplane.cli.errors import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `create` command group."""
    create = subparsers.add_parser(
        "create",
        help="create the fabric CA or a peer certificate",
        description="Create the fabric CA or a peer certificate signed by it.",
    )
    commands = create.add_subparsers(
        title="objects", dest="object", metavar="OBJECT", required=True, help="what to create"
    )

    fabric = commands.add_parser(
        "fabric",
        help="create the fabric CA (<path>/<name>/cert.pem and key.pem)",
        description=(
            "Create the fabric's certificate authority: a self-signed ECDSA P-256 CA written to "
            "<path>/<name>/cert.pem and key.pem. Every peer certificate of the fabric is signed by it; "
            "keep key.pem private."
        ),
    )
    fabric.add_argument("--name", default=pki.DEFAULT_FABRIC,
                        help="fabric name, the CA's common name and directory (default: %(default)s)")
    fabric.add_argument("--path", type=Path, default=Path("."),
                        help="directory in which the fabric directory is created (default: current directory)")
    fabric.add_argument("--days", type=int, default=pki.CA_DAYS,
                        help="validity of the CA certificate in days (default: %(default)s)")
    fabric.add_argument("--force", action="store_true",
                        help="replace an existing fabric CA (certificates it signed stop being trusted)")
    fabric.set_defaults(handler=create_fabric)

    peer = commands.add_parser(
        "peer-cert",
        help="create a peer certificate signed by the fabric CA (<path>/<fabric>/<name>/)",
        description=(
            "Create a peer's certificate and key, signed by the fabric CA, in "
            "<path>/<fabric>/<name>/ (cert.pem, key.pem and ca.pem, a copy of the fabric CA "
            "certificate). That directory is what the control plane and the gateway take as --certs."
        ),
    )
    peer.add_argument("--name", required=True,
                      help="peer name: a lowercase DNS name; the certificate's CN and DNS SAN, and the name "
                           "other peers give this peer's Peer object")
    peer.add_argument("--fabric", default=pki.DEFAULT_FABRIC,
                      help="name of the fabric whose CA signs the certificate (default: %(default)s)")
    peer.add_argument("--path", type=Path, default=Path("."),
                      help="directory holding the fabric directory (default: current directory)")
    peer.add_argument("--days", type=int, default=pki.PEER_DAYS,
                      help="validity of the peer certificate in days, at most the CA's (default: %(default)s)")
    peer.add_argument("--force", action="store_true",
                      help="replace an existing certificate of that peer (a running peer reloads it)")
    peer.set_defaults(handler=create_peer_cert)


def create_fabric(args: argparse.Namespace) -> int:
    try:
        directory = pki.create_fabric(args.path, args.name, force=args.force, days=args.days)
    except pki.PKIError as exc:
        raise CommandError(str(exc)) from exc
    print(f"Created fabric CA {args.name!r}: "
          f"{directory / pki.CERT_FILE}, {directory / pki.KEY_FILE} (keep the key private)")
    return 0


def create_peer_cert(args: argparse.Namespace) -> int:
    try:
        directory = pki.create_peer_cert(
            args.path, args.name, fabric=args.fabric, force=args.force, days=args.days
        )
        identity = pki.load_peer_identity(directory, expected_name=args.name)
    except pki.PKIError as exc:
        raise CommandError(str(exc)) from exc
    print(f"Created certificate of peer {args.name!r} (fabric {args.fabric!r}, valid until "
          f"{identity.not_after:%Y-%m-%d}): {identity.cert_path}, {identity.key_path}, {identity.ca_path}")
    return 0
