"""Structured logs: one JSON object per line, with the request id and the extra fields."""

from __future__ import annotations

import json
import logging

from app.kit.logs import JsonFormatter, request_id_var


def test_json_line_carries_event_request_id_and_extras():
    record = logging.makeLogRecord(
        {"name": "app.jobs", "levelname": "INFO", "msg": "jobs.job.claimed", "job_id": "abc"}
    )
    token = request_id_var.set("req-7")
    try:
        line = JsonFormatter().format(record)
    finally:
        request_id_var.reset(token)
    entry = json.loads(line)
    assert entry["event"] == "jobs.job.claimed"
    assert entry["request_id"] == "req-7"
    assert entry["job_id"] == "abc"
    assert entry["level"] == "INFO"


def test_exceptions_are_logged_whole():
    try:
        raise ValueError("broken")
    except ValueError:
        import sys

        record = logging.makeLogRecord({"msg": "x", "exc_info": sys.exc_info()})
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: broken" in entry["exception"]
    assert "request_id" not in entry
