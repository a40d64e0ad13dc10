"""The access log's lines: every field, always; nothing at all when it is off."""

from __future__ import annotations

import logging

import pytest

from controlplane.api.logsetup import record_fields
from controlplane.gateway.accesslog import AccessLog


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def keep():  # type: ignore[no-untyped-def]
    logger = logging.getLogger("cltest.access")
    handler = _Keep()
    logger.addHandler(handler)
    logger.propagate = False
    root_level = logging.getLogger().level
    yield logger, handler
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logging.getLogger().setLevel(root_level)


def test_off_makes_no_id_and_writes_nothing(keep) -> None:  # type: ignore[no-untyped-def]
    logger, handler = keep
    log = AccessLog(False, logger=logger)
    assert log.new_id() == ""
    log.write(conn="x", direction="egress", service_kind="import", service="ns/a", peer="p", client={}, result="ok",
              started=0.0, now=1.0)
    assert handler.records == []


def test_a_line_has_every_field_and_ids_are_unique(keep) -> None:  # type: ignore[no-untyped-def]
    logger, handler = keep
    logging.getLogger().setLevel(logging.WARNING)  # --log-level warning does not hide it
    log = AccessLog(True, logger=logger)
    ids = {log.new_id() for _ in range(100)}
    assert len(ids) == 100 and "" not in ids
    log.write(conn="c1", direction="ingress", service_kind="export", service="ns/a", peer="cl2",
              client={"client.sa": "web"}, result="ok", started=10.0, setup=10.002, to_service=5, to_client=7,
              now=10.5)
    log.write(conn="c2", direction="egress", service_kind="import", service="ns/b", peer="", client=None,
              result="no-source", started=10.0, now=10.001)
    first, second = (record_fields(r) for r in handler.records)
    assert first == {"conn": "c1", "direction": "ingress", "export": "ns/a", "peer": "cl2", "client": "client.sa=web",
                     "result": "ok", "bytes_to_service": 5, "bytes_to_client": 7, "duration_ms": 500.0,
                     "setup_ms": 2.0}
    assert second["peer"] == "-" and second["setup_ms"] == "-" and second["client"] == "unknown"
    assert second["import"] == "ns/b" and second["bytes_to_service"] == 0
    assert all(r.levelno == logging.INFO for r in handler.records)
