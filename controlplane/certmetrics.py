"""When the certificates a component uses expire, as a Prometheus collector.

    clusterlink_certificate_expiry_timestamp_seconds{component, certificate}  notAfter, Unix seconds

Computed when /metrics is scraped, so a certificate renewed on disk (cert-manager, `clusterlink`
re-issuing a peer) shows its new expiry without a restart. A file is parsed again only when its
modification time or size changed. A certificate that cannot be read or parsed has no sample (an
alert on `absent()` or on the timestamp catches both a missing and an expiring certificate) and is
logged once per change of the file.

    registry.register(CertificateExpiry("gateway", {"peer": path, "ca": path}))

It lives beside the PKI rather than in `controlplane.api` because the agent (which holds no
certificate) may import only the API contract, and this needs `controlplane.peercerts` (which reads
the expiry without `cryptography`, so that the gateway's processes need not load it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from controlplane.peercerts import CA_FILE, CERT_FILE, PKIError, not_after, pem_certificates

log = logging.getLogger(__name__)


def peer_certificates(certs: Path) -> dict[str, Path]:
    """The two certificates of a peer directory (`--certs`), by the names the metric uses."""
    return {"peer": certs / CERT_FILE, "ca": certs / CA_FILE}


class CertificateExpiry:
    def __init__(self, component: str, certificates: Mapping[str, Path]) -> None:
        self.component = component
        self.certificates = dict(certificates)
        # name -> (the file's (mtime, size), or None when it could not be read; its expiry or None)
        self._cache: dict[str, tuple[tuple[int, int] | None, float | None]] = {}

    def expiry(self, name: str) -> float | None:
        """notAfter of the first certificate in the file `name` refers to (None: unreadable).
        The file is read again only when its (mtime, size) changed; each change logs at most once."""
        path = self.certificates[name]
        try:
            st = os.stat(path)
            key: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        cached = self._cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        value = None
        try:
            value = not_after(pem_certificates(path.read_bytes(), str(path))[0]).timestamp()
        except (OSError, PKIError, ValueError) as exc:
            log.warning("Certificate %s (%s) cannot be read: %s", name, path,
                        getattr(exc, "strerror", None) or exc)
        self._cache[name] = (key, value)
        return value

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily("clusterlink_certificate_expiry_timestamp_seconds",
                                   "When a certificate this component uses expires (notAfter, Unix seconds)",
                                   labels=["component", "certificate"])
        for name in self.certificates:
            value = self.expiry(name)
            if value is not None:
                family.add_metric([self.component, name], value)
        yield family
