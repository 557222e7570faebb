"""The one place that reads the clock, so code and tests agree on UTC-aware time."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
