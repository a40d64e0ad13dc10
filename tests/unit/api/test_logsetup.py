"""Log formats: the fixed keys of a JSON line, structured fields in both formats."""

from __future__ import annotations

import json
import logging

import pytest

from controlplane.api.logsetup import JSONFormatter, TextFormatter, fields, setup_logging


def _record(msg: str = "hello %s", args: tuple = ("world",), **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("cltest.logsetup")
    return logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, args, None, extra=extra or None)


def test_json_has_the_fixed_keys_and_the_fields() -> None:
    doc = json.loads(JSONFormatter("gateway[1]").format(_record(**fields(peer="cl2", import_="ns/a", conn="x-1"))))
    assert doc["component"] == "gateway[1]" and doc["level"] == "info" and doc["logger"] == "cltest.logsetup"
    assert doc["msg"] == "hello world"
    assert (doc["peer"], doc["import"], doc["conn"]) == ("cl2", "ns/a", "x-1")
    assert doc["ts"].endswith("Z")


def test_a_field_never_replaces_a_fixed_key_and_empty_ones_are_left_out() -> None:
    doc = json.loads(JSONFormatter("agent").format(_record(**fields(msg="forged", level="debug", peer=""))))
    assert doc["msg"] == "hello world" and doc["level"] == "info"
    assert "peer" not in doc


def test_a_line_without_fields_is_unchanged() -> None:
    text = TextFormatter("controlplane").format(_record())
    assert text.endswith("controlplane INFO cltest.logsetup: hello world")


def test_text_appends_fields_quoting_spaces_and_hiding_control_characters() -> None:
    text = TextFormatter().format(_record(**fields(peer="cl2", client="app=a b", result="ok\n\x1b[31m")))
    assert text.endswith('hello world peer=cl2 client="app=a b" result=ok??[31m'), text
    assert "\n" not in text


def test_bad_format_or_level_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="log format"):
        setup_logging("info", "xml")
    with pytest.raises(ValueError, match="log level"):
        setup_logging("loud", "text")
